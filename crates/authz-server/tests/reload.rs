//! The server follows its rules file: a good edit takes effect, a bad edit is refused and the
//! last good rules stay in force, and a stop ends the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use zmesh_authz_server::{FixedClock, Server, ServerConfig, ServerError};
use zmesh_testkit::TempDir;
use zmesh_testkit::envoy::http_request;

const DENY_ALL: &str = "rules:\n- name: nobody\n  when: 'true'\n  action: deny\n  status: 401\n";
const ALLOW_GET: &str = "rules:\n- name: readers\n  when: request.method == 'GET'\n  action: allow\n";

fn status(addr: SocketAddr) -> u16 {
    http_request(addr, "GET", "/anything", &[]).status
}

/// Wait (at most 5 s) until the server answers `want`.
fn eventually(addr: SocketAddr, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = status(addr);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "the server still answers {got}, expected {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_good_edit_takes_effect_a_bad_edit_keeps_the_last_good_rules_and_stop_ends_the_server() {
    let dir = TempDir::new("authz-reload");
    let rules = dir.write("rules.yaml", DENY_ALL);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, running) = runtime.block_on(async {
        let mut config = ServerConfig::new(rules.clone());
        config.http = Some("127.0.0.1:0".parse().expect("addr"));
        config.reload_interval = Duration::from_millis(20);
        let server = Server::bind(config, Arc::new(FixedClock(SystemTime::UNIX_EPOCH))).await.expect("starts");
        let addr = server.http_addr().expect("bound");
        (addr, tokio::spawn(server.run(stop.clone())))
    });
    assert_eq!(status(addr), 401);

    std::fs::write(&rules, ALLOW_GET).expect("edit");
    eventually(addr, 200);

    // A broken edit: the rule set that allowed stays.
    std::fs::write(&rules, "rules:\n- name: broken\n  when: request.method ==\n  action: allow\n").expect("edit");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(status(addr), 200);
    // The file removed: the same.
    std::fs::remove_file(&rules).expect("remove");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(status(addr), 200);
    // Fixed again: it takes effect.
    std::fs::write(&rules, DENY_ALL).expect("edit");
    eventually(addr, 401);

    stop.cancel();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), running).await.expect("the server stops").expect("no panic");
    });
    assert!(std::net::TcpStream::connect(addr).is_err(), "still listening after the stop");
}

#[test]
fn a_server_with_bad_rules_does_not_start() {
    let dir = TempDir::new("authz-bad-rules");
    let rules = dir.write("rules.yaml", "rules:\n- name: typo\n  when: requst.path == '/'\n  action: allow\n");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut config = ServerConfig::new(rules);
    config.http = Some("127.0.0.1:0".parse().expect("addr"));
    let error =
        runtime.block_on(Server::bind(config, Arc::new(FixedClock(SystemTime::UNIX_EPOCH)))).expect_err("refused");
    let ServerError::Rules(problems) = error else { panic!("expected a rules error, got {error}") };
    assert!(problems.to_string().contains("rules.yaml:3:9: rule typo: when: unknown variable `requst`"), "{problems}");
}
