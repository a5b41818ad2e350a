package factory.risk_test

levels(risk) := {r.level | some r in risk}

test_nothing_is_low if {
	count(data.factory.risk) == 0
}

test_a_large_change_is_high if {
	levels(data.factory.risk) == {"high"} with input.totals.code_lines as 500
}

test_a_middling_change_is_medium if {
	levels(data.factory.risk) == {"medium"} with input.totals.code_lines as 100
}

test_tests_alone_never_raise_risk if {
	count(data.factory.risk) == 0 with input.totals as {"files": 30, "insertions": 900, "deletions": 0, "code_files": 0, "code_lines": 0}
}

test_weakened_tests_are_high if {
	"high" in levels(data.factory.risk) with input.tests.deleted as [{"file": "tests/test_a.py", "test": "test_a", "line": 1, "assertions": 1}]
}

test_an_added_dependency_is_high if {
	"high" in levels(data.factory.risk) with input.dependencies.added as [{"name": "requests", "file": "pyproject.toml", "section": "project", "spec": "requests"}]
}
