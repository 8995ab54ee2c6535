//! The OPA ext_authz harness works: an OPA server (Rego, opa-envoy-plugin's contract) built by
//! zmesh-testkit answers Envoy's `Authorization/Check` from a tonic client on zmesh-xds's types.
//! This proves the harness the proxy's CUSTOM-action interop tests stand on.
//!
//! Needs Go (the first run builds the server, about a minute; later runs reuse the build).

use zmesh_testkit::TempDir;
use zmesh_testkit::opa_envoy::OpaEnvoy;
use zmesh_xds::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use zmesh_xds::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use zmesh_xds::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse, check_response};

const POLICY: &str = r#"package envoy.authz

default allow := {
	"allowed": false,
	"http_status": 418,
	"body": "only GET /public is served",
	"headers": {"x-opa-decision": "denied"},
}

allow := {"allowed": true, "headers": {"x-opa-decision": "public"}} if {
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "public"
}
"#;

fn check(method: &str, path: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: "shop.local".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn headers(response: &CheckResponse) -> Vec<(String, String)> {
    let options = match &response.http_response {
        Some(check_response::HttpResponse::OkResponse(ok)) => &ok.headers,
        Some(check_response::HttpResponse::DeniedResponse(denied)) => &denied.headers,
        None => return Vec::new(),
    };
    options.iter().filter_map(|option| option.header.as_ref()).map(|h| (h.key.clone(), h.value.clone())).collect()
}

#[tokio::test]
async fn opa_allows_get_public_and_denies_the_rest_with_its_status_body_and_header() {
    let dir = TempDir::new("opa-smoke");
    let path = dir.path().to_owned();
    let opa = tokio::task::spawn_blocking(move || OpaEnvoy::start(POLICY, "data.envoy.authz.allow", &path))
        .await
        .expect("start OPA");
    let mut client = AuthorizationClient::connect(format!("http://{}", opa.addr())).await.expect("connect to OPA");

    let allowed = client.check(check("GET", "/public/catalog?page=2")).await.expect("check").into_inner();
    assert_eq!(allowed.status.as_ref().map(|s| s.code), Some(0), "{allowed:?}");
    assert!(matches!(allowed.http_response, Some(check_response::HttpResponse::OkResponse(_))), "{allowed:?}");
    assert_eq!(headers(&allowed), vec![("x-opa-decision".to_owned(), "public".to_owned())]);

    for (method, path) in [("POST", "/public/catalog"), ("GET", "/private")] {
        let denied = client.check(check(method, path)).await.expect("check").into_inner();
        assert_eq!(denied.status.as_ref().map(|s| s.code), Some(7), "{method} {path}: {denied:?}");
        let Some(check_response::HttpResponse::DeniedResponse(response)) = &denied.http_response else {
            panic!("{method} {path}: expected a denied response, got {denied:?}");
        };
        assert_eq!(response.status.as_ref().map(|s| s.code), Some(418));
        assert_eq!(response.body, "only GET /public is served");
        assert_eq!(headers(&denied), vec![("x-opa-decision".to_owned(), "denied".to_owned())]);
    }
}
