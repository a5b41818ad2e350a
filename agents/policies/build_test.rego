package factory.build_test

test_tox_ini_asks if {
	some f in data.factory.approve with input.build_files as [{"path": "tox.ini", "kind": "build", "status": "M", "sections": []}]
	f.rule == "build.touched"
	f.file == "tox.ini"
}

test_pyproject_sections_are_named if {
	some f in data.factory.approve with input.build_files as [{"path": "pyproject.toml", "kind": "build", "status": "M", "sections": ["build-system"]}]
	f.message == "changes a build file (build-system)"
}

test_no_build_file_asks_nothing if {
	count(data.factory.approve) == 0
}
