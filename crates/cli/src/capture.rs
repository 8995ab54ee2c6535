//! `zmesh capture install|remove`: run inside a pod's network namespace, as root (or with
//! CAP_NET_ADMIN), before the app starts.

use zmesh_proxy::capture::{self, CaptureSpec, Family, Ipv6Capture};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum CaptureCommand {
    /// Redirect inbound TCP to 15006 and outbound TCP to 15001, IPv4 and IPv6 alike (the
    /// proxy's own traffic, loopback and excluded ports pass). Fails when IPv6 cannot be
    /// captured but the namespace has an IPv6 address.
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
        /// Print the iptables-restore and ip6tables-restore inputs instead of applying them.
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
                out!("# iptables-restore --noflush\n{}", capture::install_rules(&spec, Family::V4));
                out!("# ip6tables-restore --noflush\n{}", capture::install_rules(&spec, Family::V6));
            } else {
                let ipv6 = capture::install(&spec)?;
                let families = match &ipv6 {
                    Ipv6Capture::Installed => "IPv4 and IPv6",
                    Ipv6Capture::NotNeeded { .. } => "IPv4",
                };
                eprintln!(
                    "✔ capture installed ({families}): inbound → {}, outbound → {}",
                    capture::INBOUND_CAPTURE_PORT,
                    capture::OUTBOUND_CAPTURE_PORT
                );
                if let Ipv6Capture::NotNeeded { reason } = ipv6 {
                    eprintln!("  IPv6 not captured ({reason}); the namespace has no IPv6 address but loopback");
                }
            }
        }
        CaptureCommand::Remove => {
            capture::remove()?;
            eprintln!("✔ capture removed");
        }
    }
    Ok(0)
}
