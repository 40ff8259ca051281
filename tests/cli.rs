//! The binaries as an operator runs them.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use crate::support::*;

#[test]
fn init_writes_the_state_directory_with_modes() {
    let node = init_master("c1");
    let expect = [
        ("ca.pem", 0o644),
        ("ca.key", 0o600),
        ("server.pem", 0o644),
        ("server.key", 0o600),
        ("client.pem", 0o644),
        ("client.key", 0o600),
        ("node.json", 0o644),
        ("config.json", 0o600),
        ("ssconf/ssconf_master_candidates_certs", 0o644),
        ("ssconf/ssconf_serial", 0o644),
    ];
    for (file, mode) in expect {
        let meta = std::fs::metadata(node.dir().join(file)).unwrap();
        assert_eq!(meta.mode() & 0o777, mode, "{file}");
    }
    // The master is the only map entry, with the digest openssl computes.
    let map = node.map();
    assert_eq!(map.len(), 1);
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(node.state.client_pem())
        .output()
        .unwrap();
    let fingerprint = text(&out.stdout);
    let (_, digest) = fingerprint.trim().split_once('=').unwrap();
    assert_eq!(map.entries()[0].1.to_string(), digest);
    // Refuses to initialise twice.
    let again = nodectl(
        node.dir(),
        &[
            "init",
            "--cluster-name",
            "x",
            "--node-name",
            "y",
            "--address",
            "127.0.0.1:1",
        ],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("already initialised"));
}

#[test]
fn init_rejects_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (vec!["--node-name", "n", "--address", "nohost"], "HOST:PORT"),
        (
            vec!["--node-name", "n", "--address", "127.0.0.1:99999"],
            "HOST:PORT",
        ),
        (
            vec!["--node-name", "bad name", "--address", "127.0.0.1:1811"],
            "node name",
        ),
    ] {
        let mut full = vec!["init", "--cluster-name", "c"];
        full.extend(args);
        let out = nodectl(&dir.path().join("s"), &full);
        assert_eq!(out.status.code(), Some(1), "{full:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.starts_with("error: ") && stderr.contains(needle),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    // Usage errors exit 2.
    let out = nodectl(dir.path(), &["init", "--cluster-name", "c"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!dir.path().join("s").join("node.json").exists());
}

/// Flag combinations the commands cannot carry out are usage errors (exit
/// 2), refused before anything is read or changed.
#[test]
fn impossible_flag_combinations_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &[
            "renew-crypto",
            "--new-node-certificates",
            "--stop-after",
            "trust",
        ][..],
        &["renew-crypto", "--stop-after", "reissue"],
        &["renew-crypto", "--new-ca", "--new-node-certificates"],
        &["renew-crypto", "--continue-ca", "--new-cluster-certificate"],
        &["renew-crypto", "--rollback-ca", "--new-node-certificates"],
        &["user", "add", "bob", "--role", "admin"],
    ] {
        let out = nodectl(dir.path(), args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // What stays allowed.
    for args in [
        &[
            "renew-crypto",
            "--new-ca",
            "--stop-after",
            "trust",
            "--new-ssh-keys",
        ][..],
        &["renew-crypto", "--continue-ca", "--stop-after", "reissue"],
    ] {
        let out = nodectl(dir.path(), args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("not initialised"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn noded_refuses_an_uninitialised_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(NODED)
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("node.json"), "{stderr}");
    assert!(
        stderr.contains("nodectl init") && stderr.contains("nodectl join"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn broken_pem_is_a_one_line_error() {
    let node = init_master("c2");
    std::fs::write(
        node.state.server_pem(),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    )
    .unwrap();
    let out = std::process::Command::new(NODED)
        .arg("--state-dir")
        .arg(node.dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("server.pem") && stderr.contains("PEM"),
        "{stderr}"
    );
}

#[test]
fn list_and_ping_from_the_master() {
    let node = init_master("c3");
    let _daemon = Daemon::start(&node, &[]);
    let out = nodectl(node.dir(), &["list", "--json"]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = &doc["nodes"][0];
    for field in [
        "name",
        "uuid",
        "address",
        "role",
        "offline",
        "digest",
        "cert_expires",
    ] {
        assert!(n.get(field).is_some(), "missing {field} in {n}");
    }
    assert_eq!(n["role"], "master");
    assert_eq!(n["address"], node.address.as_str());

    let out = nodectl(node.dir(), &["ping", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &doc["results"][0];
    assert_eq!(r["node"], "c3");
    assert_eq!(r["ok"], true);
    assert!(r["rtt_ms"].as_f64().unwrap() > 0.0);
    assert!(r["error"].is_null());

    let human = nodectl(node.dir(), &["list"]);
    assert!(text(&human.stdout).starts_with("NAME"));
    let unknown = nodectl(node.dir(), &["ping", "nosuchnode"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("unknown node"));
}

#[test]
fn ping_from_a_regular_node_is_not_authorized() {
    let master = init_master("c4");
    let daemon = Daemon::start(&master, &[]);
    let regular = regular_node(&master, "r4");
    let out = nodectl(regular.dir(), &["ping"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("not authorized"), "{stderr}");
    assert!(stderr.contains("c4"), "{stderr}");
    let out = nodectl(regular.dir(), &["ping", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["results"][0]["ok"], false);
    assert!(daemon.wait_log("CN=r4", Duration::from_secs(5)));
    // A regular node lists what its ssconf knows.
    let out = nodectl(regular.dir(), &["list", "--json"]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["nodes"][0]["role"], "master");
}

#[test]
fn readiness_is_notified_and_sigterm_stops_cleanly() {
    let node = init_master("c5");
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let daemon = Daemon::start_env(
        &node,
        &[],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 1024];
    let n = socket.recv(&mut buf).unwrap();
    let message = text(&buf[..n]);
    assert!(message.contains("READY=1"), "{message}");
    assert!(message.contains("STATUS=role master"), "{message}");
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn sighup_with_a_broken_certificate_keeps_serving() {
    let node = init_master("c6");
    let daemon = Daemon::start(&node, &[]);
    let good = std::fs::read(node.state.server_pem()).unwrap();
    std::fs::write(node.state.server_pem(), b"garbage").unwrap();
    daemon.signal("HUP");
    assert!(daemon.wait_log(
        "keeping the current TLS configuration",
        Duration::from_secs(10)
    ));
    std::fs::write(node.state.server_pem(), good).unwrap();
    let out = nodectl(node.dir(), &["ping"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn generate_man_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let out = nodectl(
        dir.path(),
        &["generate", "man", dir.path().to_str().unwrap()],
    );
    assert!(out.status.success());
    let page = std::fs::read_to_string(dir.path().join("nodectl.8")).unwrap();
    assert!(page.contains("CANDIDATE MAP") && page.contains("EXIT STATUS"));
    // The checked-in pages match the code.
    for name in ["noded.8", "nodectl.8"] {
        let generated = std::fs::read_to_string(dir.path().join(name)).unwrap();
        let checked_in = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("man")
                .join(name),
        )
        .unwrap_or_default();
        assert!(
            generated == checked_in,
            "man/{name} is out of date: run `cargo run --bin nodectl -- generate man man`"
        );
    }
    let out = nodectl(dir.path(), &["generate", "completions", "bash"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("nodectl"));
}

#[test]
fn man_pages_render_without_warnings() {
    for page in ["noded.8", "nodectl.8"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("man")
            .join(page);
        let out = std::process::Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .expect("groff is required (apt-get install groff-base)");
        assert!(out.status.success(), "{page}: {}", text(&out.stderr));
        assert!(out.stderr.is_empty(), "{page}: {}", text(&out.stderr));
    }
}

/// The systemd unit: `systemd-analyze verify` accepts it (with the unit's
/// binary path pointed at the built daemon), and its paths are the
/// binaries' defaults.
#[test]
fn systemd_unit_verifies_and_matches_the_defaults() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("scripts").join("noded.service")).unwrap();
    let state_dir = noded::state::DEFAULT_STATE_DIR;
    assert!(unit.contains(&format!("ExecStart=/usr/bin/noded --state-dir {state_dir}")));
    assert!(unit.contains(&format!("ReadWritePaths={state_dir}\n")));
    assert!(unit.contains(&format!("ConditionPathExists={state_dir}/node.json")));
    assert!(unit.contains("Type=notify"));
    // SIGHUP through the shell's builtin: a minimal Debian has no /bin/kill.
    assert!(unit.contains(r#"ExecReload=/bin/sh -c 'kill -HUP "$$MAINPID"'"#));

    let dir = tempfile::tempdir().unwrap();
    let man8 = dir.path().join("man").join("man8");
    std::fs::create_dir_all(&man8).unwrap();
    for page in ["noded.8", "nodectl.8"] {
        std::fs::copy(root.join("man").join(page), man8.join(page)).unwrap();
    }
    let local = dir.path().join("noded.service");
    std::fs::write(&local, unit.replace("/usr/bin/noded", NODED)).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .expect("systemd-analyze is required (apt-get install systemd)");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stderr).trim().is_empty(), "{}", text(&out.stderr));
}

/// The bash completion loads, and completes node names from ssconf.
#[test]
fn bash_completion_offers_node_names() {
    let node = init_master("nodecomplete1");
    let out = nodectl(node.dir(), &["generate", "completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("nodectl.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let run = |words: &str, cword: usize| {
        let program = format!(
            "source '{}'; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; \
             _nodectl_with_nodes nodectl; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(program)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let state = node.dir().to_str().unwrap().to_owned();
    let got = run(&format!("nodectl --state-dir {state} modify nodec"), 4);
    assert_eq!(got.trim(), "nodecomplete1");
    let got = run(&format!("nodectl --state-dir {state} ping ''"), 4);
    assert_eq!(got.trim(), "nodecomplete1");
    // Subcommands still complete as clap generated them.
    let got = run("nodectl veri", 1);
    assert!(got.contains("verify"), "{got}");
}

#[test]
fn a_token_lives_at_most_seven_days() {
    let m = init_master("m");
    for (ttl, needle) in [
        ("8d", "at most 7days"),
        ("604801", "at most 7days"),
        ("9999999999999s", "at most 7days"),
        ("99999999999999999999", "at most 7days"),
        ("0", "at least one second"),
        ("0s", "at least one second"),
        ("1y", "at most 7days"),
        ("soon", "not a duration like 90s, 30m, 1h or 2d"),
    ] {
        let out = nodectl(m.dir(), &["token", "create", "--ttl", ttl]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--ttl {ttl}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(needle),
            "--ttl {ttl}: {stderr}"
        );
    }
    let out = nodectl(m.dir(), &["token", "list", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["tokens"].as_array().unwrap().len(), 0, "{doc}");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for (ttl, secs) in [
        ("90s", 90),
        ("90", 90),
        ("30m", 1800),
        ("1h", 3600),
        ("2d", 172_800),
        ("7d", 604_800),
    ] {
        let token = create_token(&m, &["--ttl", ttl]);
        let expires = noded::state::token::JoinToken::parse(&token)
            .unwrap()
            .expires;
        assert!(
            (now + secs..=now + secs + 10).contains(&expires),
            "--ttl {ttl}: expires {expires}, now {now}"
        );
    }
}
