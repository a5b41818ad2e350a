# Risk: how closely a person should look, from what the change does. The gate takes the
# highest level any rule gives (none: low) and asks a person when `[queue] approval` says
# that level waits ("high": high only; "medium": medium and high; "always"; "never").
# Files that are tests never count towards size: new tests never raise risk by themselves;
# weakened ones do.
package factory

code_lines := input.totals.code_lines

code_files := input.totals.code_files

risk contains {"level": "high", "rule": "risk.size", "reason": sprintf("%d lines changed outside tests", [code_lines])} if {
	code_lines > 400
}

risk contains {"level": "medium", "rule": "risk.size", "reason": sprintf("%d lines changed outside tests", [code_lines])} if {
	code_lines > 80
	code_lines <= 400
}

risk contains {"level": "high", "rule": "risk.files", "reason": sprintf("%d files changed outside tests", [code_files])} if {
	code_files > 12
}

risk contains {"level": "medium", "rule": "risk.files", "reason": sprintf("%d files changed outside tests", [code_files])} if {
	code_files > 4
	code_files <= 12
}

risk contains {"level": "medium", "rule": "risk.deletions", "reason": sprintf("mostly deletions (%d lines)", [input.totals.deletions])} if {
	input.totals.deletions > 40
	input.totals.deletions > 2 * max([input.totals.insertions, 1])
}

risk contains {"level": "high", "rule": "risk.tests_weakened", "reason": "weakens tests", "file": t.file} if {
	some kind in ["deleted", "assertions_removed", "skips_added"]
	some t in input.tests[kind]
}

risk contains {"level": "high", "rule": "risk.build", "reason": sprintf("changes a %s file", [b.kind]), "file": b.path} if {
	some b in input.build_files
}

risk contains {"level": "high", "rule": "risk.dependencies", "reason": sprintf("adds the dependency %s", [d.name]), "file": d.file} if {
	some d in input.dependencies.added
}

risk contains {"level": "medium", "rule": "risk.dependencies", "reason": sprintf("removes the dependency %s", [d.name]), "file": d.file} if {
	some d in input.dependencies.removed
}

risk contains {"level": "medium", "rule": "risk.dependencies", "reason": sprintf("changes the requirement on %s", [d.name]), "file": d.file} if {
	some d in input.dependencies.changed
}

risk contains {"level": "high", "rule": "risk.secrets", "reason": "adds a secret-like string", "file": s.file} if {
	some s in input.secrets
}

risk contains {"level": "medium", "rule": "risk.deletes_code", "reason": "deletes a file", "file": f.path} if {
	some f in input.files
	f.status == "D"
	not f.test
}
