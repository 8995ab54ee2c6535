# The OPA policy of the end-to-end security test: paths under /public/ are allowed (with a
# header for the app), everything else is denied with OPA's own status, header and body.
package zmesh.authz

default allow := {"allowed": false, "http_status": 403, "headers": {"x-opa-reason": "private"}, "body": "denied by opa"}

allow := {"allowed": true, "headers": {"x-opa": "yes"}} if {
	startswith(input.attributes.request.http.path, "/public/")
}
