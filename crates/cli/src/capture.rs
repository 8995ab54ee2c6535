//! `zmesh capture install|remove`: run inside a pod's network namespace, as root (or with
//! CAP_NET_ADMIN), before the app starts.

use zmesh_proxy::capture::{self, CaptureSpec};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum CaptureCommand {
    /// Redirect inbound TCP to 15006 and outbound TCP to 15001 (the proxy's own traffic,
    /// loopback and excluded ports pass).
    Install {
        /// Inbound ports to leave alone (comma-separated), e.g. 22.
        #[arg(long, value_delimiter = ',')]
        exclude_inbound_ports: Vec<u16>,
        /// Outbound destination ports to leave alone (comma-separated).
        #[arg(long, value_delimiter = ',')]
        exclude_outbound_ports: Vec<u16>,
        /// Outbound destination CIDRs to leave alone (comma-separated).
        #[arg(long, value_delimiter = ',')]
        exclude_outbound_cidrs: Vec<String>,
        /// Print the iptables-restore input instead of applying it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove the rules `install` added.
    Remove,
}

pub(crate) fn capture(command: CaptureCommand) -> anyhow::Result<u8> {
    match command {
        CaptureCommand::Install { exclude_inbound_ports, exclude_outbound_ports, exclude_outbound_cidrs, dry_run } => {
            let spec = CaptureSpec { exclude_inbound_ports, exclude_outbound_ports, exclude_outbound_cidrs };
            if dry_run {
                out!("{}", capture::install_rules(&spec));
            } else {
                capture::install(&spec)?;
                eprintln!(
                    "✔ capture installed: inbound → {}, outbound → {}",
                    capture::INBOUND_CAPTURE_PORT,
                    capture::OUTBOUND_CAPTURE_PORT
                );
            }
        }
        CaptureCommand::Remove => {
            capture::remove()?;
            eprintln!("✔ capture removed");
        }
    }
    Ok(0)
}
