# Build and CI files: what runs the tests, builds the package or pins its dependencies.
# A change there alters the checks themselves (a workflow step removed, a tox env's command
# changed, a lock file repinned): a person looks first.
package factory

approve contains {
	"rule": "build.touched",
	"message": concat("", ["changes a ", b.kind, " file", sections(b)]),
	"file": b.file,
} if {
	some x in input.build_files
	b := object.union(x, {"file": x.path})
}

sections(b) := "" if count(b.sections) == 0

# concat, not sprintf: regopy 1.5.2's sprintf quotes a string that concat made.
sections(b) := concat("", [" (", concat(", ", b.sections), ")"]) if count(b.sections) > 0
