//! The host policy: what a job may make the runner read, fetch or clone on the host it runs on.
//!
//! ```text
//!   dutlab run  ──> HostPolicy { reach: Local, .. }  the user owns the machine: any path, any
//!                                                     repository, any destination
//!   dutlab agent ─> HostPolicy { reach: Lab, .. }    built from the agent configuration:
//!                                                     paths inside image_dirs only, http(s)
//!                                                     to allowed addresses only, git over
//!                                                     https only
//! ```
//!
//! Invariants:
//! - Both reaches apply the same validation of job text (image names, QEMU options,
//!   decompression bounds); `Lab` only narrows what exists on the host.
//! - A lab path is used as its canonical form (symlinks resolved) and only when that form is
//!   inside one of the canonical allowed directories.
//! - A lab destination is checked after name resolution, every resolved address must pass,
//!   and the connection goes to the checked address (the name is never resolved twice).
//! - Refused addresses by default: loopback, private, link-local, unspecified, multicast,
//!   broadcast, CGNAT, documentation/benchmark ranges, IPv6 ULA/link-local/site-local and every
//!   IPv4-mapped or -compatible form of those. The operator's `allowed_destinations` (CIDR
//!   ranges) are allowed on top.
//! - An uploaded artifact (`artifact:sha256:<hex>`) is read only through
//!   [`HostPolicy::artifact_path`], from the file the agent admitted for this job with
//!   [`HostPolicy::admit_artifact`] after fetching and verifying it. The agent's cache
//!   directory is never an image directory: a job that names a path into it is refused like
//!   any other path, so knowing a digest cached for another job reads nothing.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// Largest decompressed image by default.
pub const DEFAULT_MAX_DECOMPRESSED: u64 = 16 << 30;
/// Largest ratio of decompressed to compressed bytes by default (a sparse disk compresses
/// well, a decompression bomb far better).
pub const DEFAULT_MAX_RATIO: u64 = 2000;
/// Output below this size is never refused for its ratio.
pub const RATIO_FLOOR: u64 = 64 << 20;

/// Who owns the host a job runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// `dutlab run`: the user's own machine. Local paths, local repositories, any destination.
    Local,
    /// An agent: the operator's machine. Paths inside allowed directories only, public (or
    /// operator-allowed) destinations only, git over https only.
    Lab,
}

/// Bounds of one decompression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecompressLimits {
    /// Largest output in bytes.
    pub max_bytes: u64,
    /// Largest output / input ratio (output under [`RATIO_FLOOR`] is never refused for it).
    pub max_ratio: u64,
}

impl Default for DecompressLimits {
    fn default() -> Self {
        DecompressLimits {
            max_bytes: DEFAULT_MAX_DECOMPRESSED,
            max_ratio: DEFAULT_MAX_RATIO,
        }
    }
}

/// An address range `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `fd00::/8` or a single address.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address or address/prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// An IPv4-mapped (`::ffff:a.b.c.d`) or -compatible (`::a.b.c.d`) address as the IPv4 address
/// it carries; other addresses unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let o = v6.octets();
            // IPv4-compatible (deprecated) and NAT64 well-known prefix 64:ff9b::/96.
            let compatible =
                o[..12] == [0; 12] && o[12..] != [0, 0, 0, 0] && o[12..] != [0, 0, 0, 1];
            let nat64 = o[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0];
            if compatible || nat64 {
                return IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// Why an address is not public, or `None` when it is.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified (0.0.0.0/8)")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared CGNAT (100.64.0.0/10)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || o[0] >= 240 {
        Some("reserved (240.0.0.0/4)")
    } else if ip.is_documentation() {
        Some("documentation")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking (198.18.0.0/15)")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignments (192.0.0.0/24)")
    } else {
        None
    }
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("unique local (fc00::/7)")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local (fe80::/10)")
    } else if (s[0] & 0xffc0) == 0xfec0 {
        Some("site-local (fec0::/10)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Some("documentation (2001:db8::/32)")
    } else if s[0] == 0x0100 && s[1..4] == [0, 0, 0] {
        Some("discard (100::/64)")
    } else if s[0] == 0x2002 {
        // 6to4 embeds an IPv4 address: judge that one.
        non_public_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ))
    } else {
        None
    }
}

/// How host names are turned into addresses (the system resolver; a fixed table in tests).
#[derive(Debug, Clone, Default)]
pub enum Resolver {
    #[default]
    System,
    /// Names answered from this table only; other names do not resolve.
    Fixed(BTreeMap<String, Vec<IpAddr>>),
}

impl Resolver {
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        match self {
            Resolver::System => tokio::net::lookup_host((host, port))
                .await
                .map(|a| a.collect())
                .map_err(|e| format!("cannot resolve {host}: {e}")),
            Resolver::Fixed(table) => table
                .get(host)
                .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
                .ok_or_else(|| format!("cannot resolve {host}: unknown name")),
        }
    }
}

/// What a job may reach on the host that runs it. One per job (`runner::JobContext`).
#[derive(Debug, Clone)]
pub struct HostPolicy {
    pub reach: Reach,
    /// Canonical directories a lab job may read images from by path (the operator's
    /// `image_dirs`). Unused locally.
    image_dirs: Vec<PathBuf>,
    /// Address ranges allowed on top of public addresses (lab only).
    allowed_destinations: Vec<Cidr>,
    /// Artifacts this job references, by digest: the verified file the agent admitted.
    artifacts: BTreeMap<String, PathBuf>,
    pub decompress: DecompressLimits,
    pub resolver: Resolver,
}

impl HostPolicy {
    /// `dutlab run` on the user's own machine.
    pub fn local() -> HostPolicy {
        HostPolicy {
            reach: Reach::Local,
            image_dirs: Vec::new(),
            allowed_destinations: Vec::new(),
            artifacts: BTreeMap::new(),
            decompress: DecompressLimits::default(),
            resolver: Resolver::System,
        }
    }

    /// An agent's policy: `image_dirs` must exist (each is canonicalised now).
    pub fn lab(
        image_dirs: &[PathBuf],
        allowed_destinations: Vec<Cidr>,
        decompress: DecompressLimits,
    ) -> Result<HostPolicy, String> {
        let mut policy = HostPolicy {
            reach: Reach::Lab,
            image_dirs: Vec::new(),
            allowed_destinations,
            artifacts: BTreeMap::new(),
            decompress,
            resolver: Resolver::System,
        };
        for dir in image_dirs {
            policy.allow_image_dir(dir)?;
        }
        Ok(policy)
    }

    /// Adds a directory a lab job may read images from by path.
    pub fn allow_image_dir(&mut self, dir: &Path) -> Result<(), String> {
        let real = dir
            .canonicalize()
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        if !real.is_dir() {
            return Err(format!("{}: not a directory", dir.display()));
        }
        self.image_dirs.push(real);
        Ok(())
    }

    /// Admits the verified file of artifact `sha256` for this job (the agent calls this after
    /// fetching or checking its cached copy; the file must stay while the job runs).
    pub fn admit_artifact(&mut self, sha256: &str, file: &Path) -> Result<(), String> {
        let real = file
            .canonicalize()
            .map_err(|e| format!("{}: {e}", file.display()))?;
        if !real.is_file() {
            return Err(format!("{}: not a file", file.display()));
        }
        self.artifacts.insert(sha256.to_owned(), real);
        Ok(())
    }

    /// The file of an artifact reference: the one admitted for this job, else the reason.
    pub fn artifact_path(&self, sha256: &str) -> Result<PathBuf, String> {
        self.artifacts
            .get(sha256)
            .cloned()
            .ok_or_else(|| match self.reach {
                Reach::Local => format!(
                    "artifact:sha256:{sha256}: artifacts are fetched by a lab agent; give a path \
                 or URL to run the job here"
                ),
                Reach::Lab => format!(
                    "artifact:sha256:{sha256}: the agent did not fetch this artifact for the job"
                ),
            })
    }

    pub fn image_dirs(&self) -> &[PathBuf] {
        &self.image_dirs
    }

    /// The file an image path of a job names. Locally: relative to `job_dir`, any path. In
    /// the lab: absolute paths must be inside an allowed directory once canonical; relative
    /// paths are looked up in the allowed directories in order.
    pub fn image_path(&self, path: &str, job_dir: &Path) -> Result<PathBuf, String> {
        let p = Path::new(path);
        match self.reach {
            Reach::Local => Ok(if p.is_absolute() {
                p.to_path_buf()
            } else {
                job_dir.join(p)
            }),
            Reach::Lab => {
                if self.image_dirs.is_empty() {
                    return Err(format!(
                        "{path}: this lab reads no local image paths (the agent configuration \
                         lists no image_dirs); use an http(s) URL"
                    ));
                }
                let candidates: Vec<PathBuf> = if p.is_absolute() {
                    vec![p.to_path_buf()]
                } else {
                    self.image_dirs.iter().map(|d| d.join(p)).collect()
                };
                for candidate in &candidates {
                    let Ok(real) = candidate.canonicalize() else {
                        continue;
                    };
                    if self.image_dirs.iter().any(|d| real.starts_with(d)) {
                        return Ok(real);
                    }
                    return Err(format!(
                        "{path}: outside the image directories this lab allows ({})",
                        self.dirs_text()
                    ));
                }
                Err(format!(
                    "{path}: no such file in the image directories this lab allows ({})",
                    self.dirs_text()
                ))
            }
        }
    }

    fn dirs_text(&self) -> String {
        self.image_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether a connection to `ip` is allowed; the reason when not.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), String> {
        if self.reach == Reach::Local || self.allowed_destinations.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match non_public(ip) {
            None => Ok(()),
            Some(why) => Err(format!(
                "{ip} is not a public address ({why}); this lab fetches from public addresses \
                 and the agent's allowed_destinations only"
            )),
        }
    }

    /// Resolves `host` and checks every address; answers the one to connect to.
    pub async fn pinned_address(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        let addrs = self.resolver.resolve(host, port).await?;
        let first = *addrs
            .first()
            .ok_or_else(|| format!("{host} resolves to no address"))?;
        for addr in &addrs {
            self.check_address(addr.ip())
                .map_err(|e| format!("{host}: {e}"))?;
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classifier_refuses_every_non_public_range_and_their_v6_forms() {
        for refused in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "192.0.0.8",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
        ] {
            assert!(non_public(ip(refused)).is_some(), "{refused} passed");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "193.0.0.1",
            "2606:4700::1111",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "2002:0808:0808::",
        ] {
            assert_eq!(non_public(ip(public)), None, "{public} refused");
        }
    }

    #[test]
    fn cidr_ranges_match_by_prefix_and_across_mapped_forms() {
        let c = Cidr::parse("10.20.0.0/16").unwrap();
        assert!(c.contains(ip("10.20.3.4")));
        assert!(c.contains(ip("::ffff:10.20.3.4")));
        assert!(!c.contains(ip("10.21.0.0")));
        let c = Cidr::parse("fd00::/8").unwrap();
        assert!(c.contains(ip("fd12::1")));
        assert!(!c.contains(ip("fe80::1")));
        assert!(Cidr::parse("127.0.0.2").unwrap().contains(ip("127.0.0.2")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("example.com").is_err());
        let c = Cidr::parse("10.1.2.3/13").unwrap();
        assert!(c.contains(ip("10.7.0.0")) && !c.contains(ip("10.8.0.0")));
    }

    #[test]
    fn lab_policy_checks_addresses_local_allows_all() {
        let lab = HostPolicy::lab(
            &[],
            vec![Cidr::parse("10.9.0.0/16").unwrap()],
            DecompressLimits::default(),
        )
        .unwrap();
        assert!(lab.check_address(ip("127.0.0.1")).is_err());
        assert!(lab.check_address(ip("10.9.1.1")).is_ok());
        assert!(lab.check_address(ip("10.8.1.1")).is_err());
        assert!(lab.check_address(ip("9.9.9.9")).is_ok());
        assert!(HostPolicy::local().check_address(ip("127.0.0.1")).is_ok());
    }

    #[tokio::test]
    async fn every_resolved_address_must_pass() {
        let mut lab = HostPolicy::lab(&[], Vec::new(), DecompressLimits::default()).unwrap();
        let mut table = BTreeMap::new();
        table.insert(
            "mixed.example".to_string(),
            vec![ip("93.184.216.34"), ip("127.0.0.1")],
        );
        table.insert("public.example".to_string(), vec![ip("93.184.216.34")]);
        lab.resolver = Resolver::Fixed(table);
        let e = lab.pinned_address("mixed.example", 80).await.unwrap_err();
        assert!(e.contains("127.0.0.1") && e.contains("loopback"), "{e}");
        let a = lab.pinned_address("public.example", 443).await.unwrap();
        assert_eq!(a, "93.184.216.34:443".parse().unwrap());
        assert!(lab.pinned_address("[::1]", 80).await.is_err());
        assert!(lab.pinned_address("nowhere.example", 80).await.is_err());
    }

    #[test]
    fn lab_paths_stay_inside_image_dirs_after_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("images");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("disk.img"), b"x").unwrap();
        std::fs::write(root.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), dir.join("link")).unwrap();
        let lab = HostPolicy::lab(
            std::slice::from_ref(&dir),
            Vec::new(),
            DecompressLimits::default(),
        )
        .unwrap();
        let real = dir.canonicalize().unwrap();
        assert_eq!(
            lab.image_path("disk.img", Path::new("/")).unwrap(),
            real.join("disk.img")
        );
        let abs = dir.join("disk.img").display().to_string();
        assert_eq!(
            lab.image_path(&abs, Path::new("/")).unwrap(),
            real.join("disk.img")
        );
        for escape in ["link", "../secret", "/etc/passwd"] {
            let e = lab.image_path(escape, Path::new("/")).unwrap_err();
            assert!(
                e.contains("outside") || e.contains("no such file"),
                "{escape}: {e}"
            );
        }
        let secret = root.path().join("secret").display().to_string();
        assert!(
            lab.image_path(&secret, Path::new("/"))
                .unwrap_err()
                .contains("outside")
        );
        let none = HostPolicy::lab(&[], Vec::new(), DecompressLimits::default()).unwrap();
        assert!(
            none.image_path(&abs, Path::new("/"))
                .unwrap_err()
                .contains("image_dirs")
        );
        assert_eq!(
            HostPolicy::local()
                .image_path("x.img", Path::new("/jobs"))
                .unwrap(),
            PathBuf::from("/jobs/x.img")
        );
    }
}
