//! Man pages generated from the clap definitions, with the sections an
//! operator needs that clap does not know: files, the map format, exit codes.
//! The pages are rendered from whatever `clap::Command` they are given; the
//! command line (`crate::cli`) knows which.

const FILES: &str = r#".SH FILES
All paths are relative to the state directory (\fB\-\-state\-dir\fR, default \fI/var/lib/noded\fR).
Every file is written atomically (temporary file, fsync, rename, fsync of the directory) with the mode shown.
.TP
\fIca.pem\fR
all nodes, 0644: cluster CA certificate(s)
.TP
\fIca.key\fR
master and candidates, 0600: CA private key; absent everywhere when the config's \fBca_key\fR names a PKCS#11 token
.TP
\fIserver.pem, server.key\fR
all nodes, 0644/0600: this node's own server certificate (SANs: its name and urn:uuid:<uuid>) and key; the key is made on the node
.TP
\fIclient.pem, client.key\fR
all nodes, 0644/0600: this node's client certificate; the key is made on the node
.TP
\fInode.json\fR
all nodes, 0644: uuid, name, address of this node
.TP
\fIconfig.json\fR
master and candidates, 0600: cluster configuration with its serial
.TP
\fIssconf/ssconf_<key>\fR
all nodes, 0644: simple-store configuration. Beside each file a set change rewrote: \fI.ssconf_<key>.swap\fR, the file's previous content; the next change writes into it and exchanges it with the file (\fBrenameat2\fR(2) \fBRENAME_EXCHANGE\fR), so a change creates and frees no inode; a swap file exchanged less than 250\ ms before is not rewritten but replaced, so a reader that reads a file within 250\ ms of opening it sees one version whole. Not read by anything; safe to remove.
.TP
\fItokens.json\fR
master, 0600: join tokens (secrets stored as hashes)
.SH CANDIDATE MAP
\fIssconf/ssconf_master_candidates_certs\fR holds one line per master candidate (the master included), sorted by uuid:
.PP
.RS
<node\-uuid>=<digest>
.RE
.PP
The digest is the client certificate's DER digest as \fBopenssl x509 \-noout \-fingerprint \-sha256\fR (or \fB\-sha1\fR) prints it: upper-case hex pairs joined by colons.
20 bytes is SHA\-1 (Ganeti's format, loads unchanged), 32 bytes SHA\-256.
A client is admitted only if its certificate chains to the cluster CA and its digest is in the map.
A malformed line keeps the previous map (the error names the line); no map denies every client.
.PP
\fIssconf/ssconf_node_server_certs\fR holds, in the same format, the SHA\-256 digest of every node's own server certificate (two for a node switching certificates).
Every RPC client accepts a server only if its certificate chains to the cluster CA, names the node it meant to reach, and has the digest recorded here for that node's uuid.
"#;

const EXIT: &str = r#".SH EXIT STATUS
.TP
0
success
.TP
1
the operation failed, or \fBverify\fR found errors
.TP
2
usage error
.TP
3
completed, but some nodes were unreachable (each named on stderr)
"#;

const NODED_NOTES: &str = r#".SH SIGNALS
.TP
SIGHUP
reload certificates and ssconf
.TP
SIGTERM, SIGINT
stop accepting, finish in-flight requests (bounded), exit 0
.PP
With \fI$NOTIFY_SOCKET\fR set, the daemon sends READY=1 once it listens, and STATUS= lines with its role and map size.
.SH CONNECTION BUDGETS
A connection in the TLS handshake holds a slot of \fB\-\-max\-handshakes\fR and of its source address's share, \fB\-\-max\-handshakes\-per\-source\fR (an IPv6 /64 is one source); only an admitted connection takes one of \fB\-\-max\-connections\fR.
A connection that finds a budget full is closed at once and logged as denied, with its peer and the budget.
.PP
The IP addresses of the master and the master candidates (from \fIssconf_node_addresses\fR, IP literals; re-read with ssconf) have handshake slots of their own, so a flood from other addresses cannot keep them out.
The lane is chosen by the TCP source address; authorization still happens in the TLS handshake.
.PP
At start the daemon raises its soft open-file limit to \fB\-\-max\-connections\fR + 2 \(mu \fB\-\-max\-handshakes\fR + 256, up to the hard limit, and warns when the hard limit is lower.
.SH EXAMPLES
.nf
noded \-\-state\-dir /var/lib/noded
noded \-\-state\-dir /tmp/n1 \-\-listen 127.0.0.1:1811 \-\-log\-format json
.fi
"#;

const NODECTL_NOTES: &str = r#".SH CA KEY IN A PKCS#11 TOKEN
With \fBinit \-\-ca\-key\fR \fIpkcs11:token=T;object=O?module\-path=LIB&pin\-source=file:PATH\fR (RFC 7512; or \fIpin\-source=env:VARIABLE\fR; \fIpin\-value\fR is refused) the CA key is an EC P\-256 key inside the token, made there if no key is labelled O, never extractable.
No node has \fIca.key\fR; the URI is kept in \fIconfig.json\fR and every master candidate signs through it, so the token (and the PIN file) must be reachable from each of them.
A CA rotation makes the next key as O.new and then renames the keys (O to O.old, O.new to O); a rollback renames them back (the unused new key keeps a label O.rolled\-back.TIME.unused; no key is ever destroyed).
\fBverify\fR reports CA_KEY_UNUSABLE when the token cannot be reached, refuses the PIN, lacks the key, or holds a key that is not the one of \fIca.pem\fR, and CA_KEY_FILE_WITH_TOKEN for a \fIca.key\fR file on any node.
.PP
Trust model: a compromised master candidate can still sign certificates while it is a candidate (it reaches the token), but it cannot copy the key, so demotion (and a PIN change) ends its power to sign; with the file backend, a key it copied stays usable until \fBrenew\-crypto \-\-new\-ca\fR.
.SH CA ROTATION
\fBrenew\-crypto \-\-new\-ca\fR rotates the cluster CA in phases, each committed in the config before any node is changed for it and shown by \fBstatus\fR: \fItrust\fR (every online node trusts the old and the new CA; the old one still signs), \fIreissue\fR (the new CA signs; every node's client and server certificates are reissued by it), \fIdrop\fR (the old CA leaves every trust store; the rotation ends).
\fB\-\-stop\-after trust\fR|\fBreissue\fR pauses once that phase is complete; \fB\-\-continue\-ca\fR goes on; \fB\-\-rollback\-ca\fR (before drop) makes the old CA sign again, reissues by it what the new CA signed, and leaves the old CA alone in every trust store (phase \fIrollback\fR).
A node that cannot be reached holds the rotation at its phase (exit 3, naming it); when it is back, the master's convergence loop brings it to the phase (its CA bundle and, in reissue or rollback, its certificates), and \fB\-\-continue\-ca\fR finishes. No node has to join again.
.SH JSON OUTPUT
With \fB\-\-json\fR, commands print one JSON document; field names are stable:
.TP
list
{"nodes": [{"name", "uuid", "address", "role", "offline", "digest", "cert_expires"}]}
.TP
ping
{"results": [{"node", "ok", "rtt_ms", "error"}]}
.TP
verify
{"findings": [{"severity", "node", "code", "message", "fix"}]}
.TP
token create
{"id", "expires", "master_candidate", "connection_string"}
.TP
token list
{"tokens": [{"id", "expires", "master_candidate"}]}
.SH EXAMPLES
Create a cluster and start its master:
.PP
.nf
nodectl \-\-state\-dir /var/lib/noded init \-\-cluster\-name prod \-\-node\-name node1 \-\-address 192.0.2.1:1811
systemctl enable \-\-now noded
.fi
.PP
The same with the CA key in an HSM:
.PP
.nf
nodectl init \-\-cluster\-name prod \-\-node\-name node1 \-\-address 192.0.2.1:1811 \\
    \-\-ca\-key 'pkcs11:token=prod;object=ca?module\-path=/usr/lib/softhsm/libsofthsm2.so&pin\-source=file:/etc/noded/pin'
.fi
.PP
Join a node: on the master, make a token; on the new node, use it:
.PP
.nf
nodectl token create \-\-ttl 30m
nodectl join 'noded\-join:...' \-\-node\-name node2 \-\-address 192.0.2.2:1811
systemctl enable \-\-now noded
.fi
.PP
Move the master-candidate role, take a node out for maintenance:
.PP
.nf
nodectl modify node2 \-\-master\-candidate=yes
nodectl modify node3 \-\-master\-candidate=no \-\-auto\-promote
nodectl modify node4 \-\-offline=yes
nodectl modify node4 \-\-offline=no
.fi
.PP
Check the cluster, rotate its crypto, check again:
.PP
.nf
nodectl verify
nodectl renew\-crypto \-\-new\-node\-certificates \-\-new\-cluster\-certificate \-\-new\-ssh\-keys
nodectl renew\-crypto \-\-new\-ca
nodectl verify \-\-json
.fi
.PP
Check that every online node answers, from any node:
.PP
.nf
nodectl ping
nodectl ping \-\-json node2
.fi
"#;

/// Escapes text for roff: backslashes, and a leading dot or quote.
fn roff(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    match text.chars().next() {
        Some('.') | Some('\'') => format!("\\&{text}"),
        _ => text,
    }
}

/// One `.SS` section per (sub)command, with its options.
fn render_commands(page: &mut Vec<u8>, cmd: &clap::Command, path: &str) {
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let full = format!("{path} {}", sub.get_name());
        if sub.has_subcommands() {
            render_commands(page, sub, &full);
            continue;
        }
        let mut usage = full.clone();
        for arg in sub.get_positionals() {
            let name = arg
                .get_value_names()
                .and_then(|v| v.first())
                .map(|v| v.to_string())
                .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
            usage.push_str(&format!(" {name}"));
        }
        page.extend_from_slice(format!(".SS \"{}\"\n", roff(&usage)).as_bytes());
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        for para in about.split("\n\n") {
            page.extend_from_slice(format!("{}\n.PP\n", roff(para.trim())).as_bytes());
        }
        for arg in sub
            .get_arguments()
            .filter(|a| !a.is_global_set() && !a.is_positional())
        {
            let Some(long) = arg.get_long() else { continue };
            let value = if arg.get_action().takes_values() {
                arg.get_value_names()
                    .and_then(|v| v.first())
                    .map(|v| format!(" {v}"))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            let default = arg
                .get_default_values()
                .first()
                .map(|d| format!(" [default: {}]", d.to_string_lossy()))
                .unwrap_or_default();
            page.extend_from_slice(
                format!(
                    ".TP\n\\fB\\-\\-{}\\fR{}\n{}{}\n",
                    roff(long),
                    roff(&value),
                    roff(&help),
                    roff(&default)
                )
                .as_bytes(),
            );
        }
    }
}

/// Renders one page.
pub fn render(cmd: &clap::Command) -> std::io::Result<Vec<u8>> {
    let mut page = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone()).section("8");
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    if cmd.has_subcommands() {
        page.extend_from_slice(b".SH COMMANDS\n");
        render_commands(&mut page, cmd, cmd.get_name());
    }
    page.extend_from_slice(FILES.as_bytes());
    page.extend_from_slice(EXIT.as_bytes());
    page.extend_from_slice(if cmd.get_name() == "noded" {
        NODED_NOTES.as_bytes()
    } else {
        NODECTL_NOTES.as_bytes()
    });
    man.render_version_section(&mut page)?;
    Ok(page)
}
