//! `dutlab tls init DIR`: a CA and a server certificate for a lab without a PKI.
//!
//! Invariants:
//! - Nothing existing is overwritten; keys are written with mode 0600 (see `tls::pki`).
//! - The names default to localhost, 127.0.0.1, ::1 and this host's name; `--name` replaces them.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory to write ca.pem, ca-key.pem, server.pem and server-key.pem to.
    dir: PathBuf,
    /// A DNS name or IP address of the controller (repeat for more). Default: localhost,
    /// 127.0.0.1, ::1 and this host's name.
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
}

/// This host's name, when the kernel tells it.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty() && name != "localhost").then(|| name.to_owned())
}

pub fn init(args: InitArgs) -> i32 {
    let names = if args.names.is_empty() {
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        names.extend(host_name());
        names
    } else {
        args.names
    };
    match tls::pki::init(&args.dir, &names) {
        Ok(made) => {
            println!(
                "dutlab: made a lab CA and a server certificate for {}\n\
                 \n\
                 controller:  dutlab serve --tls-cert {} --tls-key {} --listen 0.0.0.0:7780\n\
                 agent.yaml:  controller: https://HOST:7780\n             ca_file: {}\n\
                 clients:     dutlab login --url https://HOST:7780 --ca {}\n\
                 or pin the server certificate instead of trusting the CA:\n             \
                 --pin {}   (agent.yaml: pin: {})\n\
                 \n\
                 Copy ca.pem to agents and users; keep ca-key.pem and server-key.pem private.",
                names.join(", "),
                made.server_cert.display(),
                made.server_key.display(),
                made.ca_cert.display(),
                made.ca_cert.display(),
                made.server_fingerprint,
                made.server_fingerprint,
            );
            0
        }
        Err(e) => {
            eprintln!("dutlab: error: tls init: {e}");
            proto::Outcome::InfraError.exit_code()
        }
    }
}
