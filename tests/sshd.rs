//! The SSH keys of master candidates against a real OpenSSH server: a
//! candidate's key logs in to a regular node, and after its demotion the same
//! key (kept aside by an attacker, say) is refused.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Where Debian and most systems install the daemon; sshd must be started
/// with an absolute path (it re-executes itself).
const SSHD_CANDIDATES: &[&str] = &["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"];

fn find_sshd() -> Option<PathBuf> {
    SSHD_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Whether `tool` runs at all (`ssh -V` and `ssh-keygen --help` both print
/// to stderr; only a failure to spawn matters).
fn has_tool(tool: &str) -> bool {
    Command::new(tool)
        .arg("-V")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn sh(script: &str) -> Output {
    Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    assert!(out.status.success(), "id -un: {}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    text(&out.stdout).trim() == "0"
}

/// The sshd binary, installing OpenSSH if it is missing and we may; `Err`
/// says why the test cannot run.
fn openssh() -> Result<PathBuf, String> {
    let have = || find_sshd().is_some() && has_tool("ssh") && has_tool("ssh-keygen");
    if !have() {
        if !is_root() {
            return Err("OpenSSH (sshd, ssh, ssh-keygen) is not installed and we are not root to install it".into());
        }
        if !has_tool("apt-get") {
            return Err("OpenSSH is not installed and there is no apt-get".into());
        }
        eprintln!("installing openssh-server and openssh-client with apt-get");
        let out = sh("timeout 900 sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client'");
        if !out.status.success() {
            return Err(format!(
                "apt-get could not install OpenSSH ({}): {}{}",
                out.status,
                text(&out.stdout),
                text(&out.stderr)
            ));
        }
        if !have() {
            return Err(format!(
                "OpenSSH was installed but sshd is not at any of {SSHD_CANDIDATES:?} or ssh/ssh-keygen are not on PATH"
            ));
        }
    }
    Ok(find_sshd().unwrap())
}

/// A running `sshd -D`, killed when dropped (also when the test fails).
struct Sshd {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Sshd {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sshd(sshd: &Path, dir: &Path, authorized_keys: &Path) -> Sshd {
    let hostkey = dir.join("hostkey");
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "sshd-test-host",
            "-f",
        ])
        .arg(&hostkey)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen: {}", text(&out.stderr));
    if is_root() {
        // The privilege separation directory of Debian's sshd.
        std::fs::create_dir_all("/run/sshd").unwrap();
        std::fs::set_permissions("/run/sshd", std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let port = free_port();
    let config = dir.join("sshd_config");
    let text_config = format!(
        "ListenAddress 127.0.0.1\n\
         Port {port}\n\
         HostKey {hostkey}\n\
         PidFile {pid}\n\
         AuthorizedKeysFile {authorized_keys}\n\
         AuthorizedKeysCommand none\n\
         AuthorizedPrincipalsFile none\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         HostbasedAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         UsePAM no\n\
         StrictModes no\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         LogLevel VERBOSE\n",
        hostkey = hostkey.display(),
        pid = dir.join("sshd.pid").display(),
        authorized_keys = authorized_keys.display(),
    );
    std::fs::write(&config, text_config).unwrap();
    let out = Command::new(sshd)
        .arg("-t")
        .arg("-f")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sshd -t rejects the config: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let log = dir.join("sshd.log");
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("sshd.stdout")).unwrap())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Sshd { child, log, port };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("sshd exited ({status}) before listening: {}", server.log());
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sshd did not listen on {addr} within 15 s: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// `ssh -i KEY ... USER@127.0.0.1 true`, bounded by ConnectTimeout and an
/// outer `timeout`.
fn ssh_true(server: &Sshd, key: &Path, user: &str) -> Output {
    Command::new("timeout")
        .args(["30", "ssh", "-F", "/dev/null", "-i"])
        .arg(key)
        .args([
            "-p",
            &server.port.to_string(),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            &format!("{user}@127.0.0.1"),
            "true",
        ])
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn assert_logs_in(server: &Sshd, key: &Path, user: &str, what: &str) {
    let out = ssh_true(server, key, user);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what} should log in: {}{}\nsshd log:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        server.log()
    );
}

fn modify(master: &Node, node: &str, candidate: &str) {
    let out = nodectl(
        master.dir(),
        &["modify", node, &format!("--master-candidate={candidate}")],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "modify {node} --master-candidate={candidate}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn demoted_candidate_key_is_refused_by_real_sshd() {
    let sshd = match openssh() {
        Ok(path) => path,
        Err(reason) => {
            eprintln!("skipping sshd test: {reason}");
            return;
        }
    };
    let user = current_user();

    let m = init_master_with("m", &["--candidate-pool-size", "1"]);
    let _m_daemon = Daemon::start(&m, &[]);
    let (b, _b_daemon) = join_and_start(&m, "b", &[]);
    let (c, _c_daemon) = join_and_start(&m, "c", &[]);

    // The operator's own line in c's authorized_keys, outside the markers.
    let operator = "# operator line";
    let c_keys = c.state.authorized_keys();
    let before = std::fs::read_to_string(&c_keys).unwrap_or_default();
    assert!(
        before.contains(noded::state::ssh::END),
        "c's authorized_keys has no managed block after the join:\n{before}"
    );
    std::fs::write(&c_keys, format!("{before}{operator}\n")).unwrap();

    modify(&m, "b", "yes");
    let b_key = b.state.ssh_private_key();
    assert!(b_key.exists(), "promoted b has no SSH key");

    let tmp = tempfile::tempdir().unwrap();
    let server = start_sshd(&sshd, tmp.path(), &c_keys);
    assert_logs_in(&server, &b_key, &user, "candidate b's key");

    // Keep b's key, as someone who copied it while b was a candidate would.
    let stolen = tmp.path().join("b_old_id_ed25519");
    std::fs::copy(&b_key, &stolen).unwrap();
    std::fs::set_permissions(&stolen, std::fs::Permissions::from_mode(0o600)).unwrap();

    modify(&m, "b", "no");
    assert!(!b_key.exists(), "demoted b still has its SSH private key");

    // The master first: an authentication failure must not be what lets a
    // later login through or blocks it.
    assert_logs_in(
        &server,
        &m.state.ssh_private_key(),
        &user,
        "the master's key",
    );

    let out = ssh_true(&server, &stolen, &user);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(255),
        "demoted b's old key should be refused: {}{stderr}\nsshd log:\n{}",
        text(&out.stdout),
        server.log()
    );
    assert!(
        stderr.contains("Permission denied"),
        "refusal is not an authentication failure: {stderr}\nsshd log:\n{}",
        server.log()
    );

    let after = std::fs::read_to_string(&c_keys).unwrap();
    assert!(
        after.lines().any(|l| l == operator),
        "the operator's line is gone from c's authorized_keys:\n{after}"
    );
    let managed = noded::state::ssh::managed_keys(&after).unwrap();
    assert!(
        !managed.iter().any(|k| k == operator),
        "the operator's line moved into the managed block:\n{after}"
    );
    let b_public =
        noded::state::ssh::public_of(&std::fs::read_to_string(&stolen).unwrap()).unwrap();
    assert!(
        !after.contains(b_public.trim()),
        "demoted b's public key is still in c's authorized_keys:\n{after}"
    );
    eprintln!(
        "sshd test: b logged in as {user} while a candidate; its old key was refused after demotion; the master still logs in"
    );
}
