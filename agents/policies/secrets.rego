# Secret-like strings the change adds (input.secrets: detect-secrets' regex detectors on the
# added lines of every file, tests and fixtures included). A key in the history is leaked
# for good, whatever a later commit removes: deny. A line the agent marked with
# `pragma: allowlist secret` asks a person instead (the agent wrote the pragma too).
package factory

deny contains {
	"rule": "secrets.added",
	"message": sprintf("adds what looks like a secret (%s)", [s.type]),
	"file": s.file,
	"line": s.line,
} if {
	some s in input.secrets
	not s.allowlisted
}

approve contains {
	"rule": "secrets.allowlisted",
	"message": sprintf("adds what looks like a secret (%s), marked allowlisted", [s.type]),
	"file": s.file,
	"line": s.line,
} if {
	some s in input.secrets
	s.allowlisted
}
