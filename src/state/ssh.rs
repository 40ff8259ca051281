//! SSH keys of master candidates and the managed `authorized_keys` block.
//!
//! Each master candidate makes its own ed25519 key pair (OpenSSH formats, via
//! the `ssh-key` crate); its private key never leaves it. Every node's
//! `authorized_keys` holds the candidates' public keys between two marker
//! lines; lines outside the markers belong to the operator and are kept
//! byte for byte.

use std::path::Path;

use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

use crate::core::{Error, Result, Secret};
use crate::state::StateDir;

/// First line of the managed block.
pub const BEGIN: &str =
    "# BEGIN noded managed keys: lines up to the END marker are rewritten by noded";
/// Last line of the managed block.
pub const END: &str = "# END noded managed keys";

/// A fresh ed25519 key pair: `(private key in OpenSSH format, public key line)`.
pub fn generate(comment: &str) -> Result<(Secret, String)> {
    let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
        .map_err(|e| Error::Invalid(format!("cannot generate an SSH key: {e}")))?;
    key.set_comment(comment);
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| Error::Invalid(format!("cannot encode the SSH key: {e}")))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| Error::Invalid(format!("cannot encode the SSH public key: {e}")))?;
    Ok((Secret::new(private.to_string()), public))
}

/// The public key line of an OpenSSH private key.
pub fn public_of(private: &str) -> Result<String> {
    PrivateKey::from_openssh(private)
        .and_then(|k| k.public_key().to_openssh())
        .map_err(|e| Error::Invalid(format!("unreadable SSH private key: {e}")))
}

/// Checks that `line` is one OpenSSH public key line.
pub fn check_public(line: &str) -> Result<()> {
    if line.contains('\n') {
        return Err(Error::Invalid("SSH public key spans several lines".into()));
    }
    PublicKey::from_openssh(line)
        .map(|_| ())
        .map_err(|e| Error::Invalid(format!("not an SSH public key: {e}")))
}

/// The keys in the managed block of `text` (empty if there is none).
pub fn managed_keys(text: &str) -> Result<Vec<String>> {
    let (_, block, _) = split(text)?;
    Ok(block.into_iter().map(str::to_owned).collect())
}

/// `(before, block, after)`; the block without its markers.
fn split(text: &str) -> Result<(Vec<&str>, Vec<&str>, Vec<&str>)> {
    let lines: Vec<&str> = text.lines().collect();
    let begin = lines.iter().position(|l| *l == BEGIN);
    let end = lines.iter().position(|l| *l == END);
    match (begin, end) {
        (None, None) => Ok((lines, Vec::new(), Vec::new())),
        (Some(b), Some(e)) if b < e => Ok((
            lines.get(..b).unwrap_or_default().to_vec(),
            lines.get(b + 1..e).unwrap_or_default().to_vec(),
            lines.get(e + 1..).unwrap_or_default().to_vec(),
        )),
        _ => Err(Error::Invalid(
            "authorized_keys has an unmatched noded marker line; fix the file by hand (keep or remove both markers)".into(),
        )),
    }
}

/// `text` with its managed block replaced by `keys` (appended at the end if
/// there was no block).
pub fn with_managed_keys(text: &str, keys: &[String]) -> Result<String> {
    let (before, _, after) = split(text)?;
    let mut out = String::new();
    for line in before {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(BEGIN);
    out.push('\n');
    for key in keys {
        out.push_str(key.trim());
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    for line in after {
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// Rewrites the managed block of the file at `path` (created if missing),
/// atomically, mode 0600.
pub fn write_authorized_keys(path: &Path, keys: &[String]) -> Result<()> {
    for key in keys {
        check_public(key)?;
    }
    let current = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(path)(e)),
    };
    let text = with_managed_keys(&current, keys)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    ssconf::write_atomic(path, text.as_bytes(), super::MODE_SECRET).map_err(Error::io(path))
}

/// Replaces this node's SSH key pair with a new one.
pub fn replace_ssh_key(state: &StateDir, comment: &str) -> Result<String> {
    for path in [state.ssh_private_key(), state.ssh_public_key()] {
        ssconf::atomic::remove_durable(&path).map_err(Error::io(&path))?;
    }
    ensure_ssh_key(state, comment)
}

/// This node's SSH public key, making the key pair first if there is none.
pub fn ensure_ssh_key(state: &StateDir, comment: &str) -> Result<String> {
    let private = state.ssh_private_key();
    if private.exists() {
        let text = std::fs::read_to_string(&private).map_err(Error::io(&private))?;
        return public_of(&text);
    }
    let (key, public) = generate(comment)?;
    state.write_ssh_key_pair(&key, &public)?;
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_block_keeps_other_lines() -> Result<()> {
        let (_, a) = generate("a")?;
        let (_, b) = generate("b")?;
        let operator =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorKeyOperatorKeyOperatorKey00 op@host\n";
        let text = with_managed_keys(operator, &[a.clone(), b.clone()])?;
        assert!(text.starts_with(operator));
        assert_eq!(managed_keys(&text)?, [a.clone(), b]);
        let text = format!("{text}# trailing operator comment\n");
        let again = with_managed_keys(&text, std::slice::from_ref(&a))?;
        assert!(again.starts_with(operator));
        assert!(again.ends_with("# trailing operator comment\n"));
        assert_eq!(managed_keys(&again)?, [a]);
        assert!(managed_keys(&format!("{BEGIN}\nx\n")).is_err());
        Ok(())
    }

    #[test]
    fn generated_keys_parse() -> Result<()> {
        let (private, public) = generate("node1")?;
        assert!(public.starts_with("ssh-ed25519 "));
        assert_eq!(public_of(private.expose())?, public);
        check_public(&public)?;
        assert!(check_public("ssh-ed25519 garbage").is_err());
        assert!(!format!("{private:?}").contains("PRIVATE"));
        Ok(())
    }
}
