package factory.tests_test

t := {"file": "tests/test_a.py", "test": "test_a", "line": 4}

test_a_deleted_test_asks if {
	some f in data.factory.approve with input.tests.deleted as [object.union(t, {"assertions": 2})]
	f.rule == "tests.deleted"
}

test_removed_assertions_ask if {
	some f in data.factory.approve with input.tests.assertions_removed as [object.union(t, {"before": 2, "after": 1})]
	f.rule == "tests.assertions_removed"
}

test_an_added_skip_asks if {
	some f in data.factory.approve with input.tests.skips_added as [object.union(t, {"kind": "mark.xfail"})]
	f.rule == "tests.skip_added"
}

test_new_tests_ask_nothing if {
	count(data.factory.approve) == 0 with input.tests.added as [object.union(t, {"assertions": 1})]
	count(data.factory.risk) == 0 with input.tests.added as [object.union(t, {"assertions": 1})]
}
