package factory.secrets_test

aws := {"file": "app.py", "line": 3, "type": "AWS Access Key", "allowlisted": false}

test_a_secret_is_denied if {
	some f in data.factory.deny with input.secrets as [aws]
	f.rule == "secrets.added"
	f.file == "app.py"
	f.line == 3
}

test_no_secret_no_deny if {
	count(data.factory.deny) == 0
}

test_an_allowlisted_secret_asks if {
	some f in data.factory.approve with input.secrets as [object.union(aws, {"allowlisted": true})]
	f.rule == "secrets.allowlisted"
	count(data.factory.deny) == 0 with input.secrets as [object.union(aws, {"allowlisted": true})]
}
