# Tests weakened: a test deleted, assertions removed from one, a skip or xfail added. Each
# asks a person (needs_approval) rather than denying: removing an obsolete test is sometimes
# the task, and a deny could never be overridden. Nothing weakened lands unattended. New
# tests are never judged here.
package factory

approve contains {
	"rule": "tests.deleted",
	"message": sprintf("deletes the test %s (%d assertions)", [t.test, t.assertions]),
	"file": t.file,
	"line": t.line,
} if {
	some t in input.tests.deleted
}

approve contains {
	"rule": "tests.assertions_removed",
	"message": sprintf("%s: %d assertions, was %d", [t.test, t.after, t.before]),
	"file": t.file,
	"line": t.line,
} if {
	some t in input.tests.assertions_removed
}

approve contains {
	"rule": "tests.skip_added",
	"message": sprintf("%s: adds %s", [t.test, t.kind]),
	"file": t.file,
	"line": t.line,
} if {
	some t in input.tests.skips_added
	t.test != ""
}

approve contains {
	"rule": "tests.skip_added",
	"message": sprintf("adds %s to the whole module", [t.kind]),
	"file": t.file,
	"line": t.line,
} if {
	some t in input.tests.skips_added
	t.test == ""
}
