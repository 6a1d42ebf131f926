//! `dutlab-loadbench`: a load benchmark of the dutlab controller (not a test: it measures and
//! prints, it never asserts timings).
//!
//! Each scenario starts its own `dutlab serve` (127.0.0.1, a free port, a fresh temporary data
//! directory, `DUTLAB_LOG=warn`) and drives it over real sockets: simulated agents on the
//! agent link, job submissions over HTTP, log followers over WebSocket. See
//! `docs/benchmarks.md` for what each scenario measures.

mod agent;
mod cluster;
mod failover;
mod followers;
mod ingest;
mod multinode;
mod real;
mod rss;
mod server;
mod stats;
mod streams;
mod submit;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Submit-to-start latency with `--jobs` queued jobs on agents x devices-per-agent devices.
    Submit,
    /// Log lines stored per second.
    Ingest,
    /// Controller memory with `--agents` and 10 x `--agents` connected agents.
    Rss,
    /// End-to-end latency of `--followers` live log followers.
    Followers,
    /// Console keystroke round trip through the controller to a simulated agent that echoes.
    ConsoleRtt,
    /// TCP stream throughput both ways through the controller to a simulated agent.
    Forward,
    /// Job log rate with 0 and `--viewers` console viewers on the same simulated agent.
    Viewers,
    /// Keystrokes, SSH through a TCP stream, and console viewers on a real agent's QEMU DUT.
    RealDut,
    /// MultiNode: group start after the last device frees, and lava-send -> lava-wait latency.
    Multinode,
    /// Several controllers: kill -9 the leader and time until a follower starts jobs again.
    Failover,
    /// Submit, ingest, rss and followers, each on a fresh controller.
    All,
}

/// Load benchmark of the dutlab controller (`dutlab serve`).
#[derive(Debug, Parser)]
#[command(name = "dutlab-loadbench", version)]
struct Args {
    /// The dutlab binary to benchmark (a release build: target/release/dutlab).
    #[arg(long, value_name = "PATH")]
    dutlab: PathBuf,
    /// Simulated agents (submit: they hold the devices; rss: first level, then 10 x).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Devices per simulated agent.
    #[arg(long, default_value_t = 1)]
    devices_per_agent: usize,
    /// Jobs queued before the devices connect (submit).
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Mean simulated job time in milliseconds; each job takes 0.5 to 1.5 x this (submit).
    #[arg(long, default_value_t = 2000)]
    job_ms: u64,
    /// Jobs submitted one at a time to idle devices after the queue drained (submit).
    #[arg(long, default_value_t = 1000)]
    idle_jobs: usize,
    /// Live log followers (followers).
    #[arg(long, default_value_t = 1000)]
    followers: usize,
    /// Running jobs the followers are spread over (followers).
    #[arg(long, default_value_t = 100)]
    follow_jobs: usize,
    /// Log lines per second each followed job sends (followers).
    #[arg(long, default_value_t = 100)]
    follow_rate: u64,
    /// How long the followed jobs send lines, in seconds (followers).
    #[arg(long, default_value_t = 10)]
    follow_secs: u64,
    /// Agents streaming logs at once, one job each (ingest).
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Log lines each ingest stream sends (ingest).
    #[arg(long, default_value_t = 1_000_000)]
    lines: u64,
    /// Keystrokes timed (console-rtt, real-dut).
    #[arg(long, default_value_t = 1000)]
    keystrokes: usize,
    /// Megabytes (10^6 bytes) carried each way (forward).
    #[arg(long, default_value_t = 256)]
    forward_mb: u64,
    /// Console viewers (viewers, real-dut).
    #[arg(long, default_value_t = 100)]
    viewers: usize,
    /// Bytes per second the simulated console prints to each viewer (viewers).
    #[arg(long, default_value_t = 65_536)]
    console_rate: u64,
    /// Log lines of the job while the viewers watch (viewers).
    #[arg(long, default_value_t = 500_000)]
    log_lines: u64,
    /// Megabytes each way over SSH to the DUT (real-dut).
    #[arg(long, default_value_t = 16)]
    ssh_mb: u64,
    /// Lines the DUT prints on its console per burst (real-dut).
    #[arg(long, default_value_t = 20_000)]
    console_lines: u64,
    /// Guest image directory for the real agent (real-dut; default: DUTLAB_IMAGE_DIR or the
    /// image cache, as `dutlab agent` finds it).
    #[arg(long, value_name = "DIR")]
    image_dir: Option<PathBuf>,
    /// Groups started one after another (multinode).
    #[arg(long, default_value_t = 50)]
    groups: usize,
    /// MultiNode messages timed (multinode).
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Extra argument for `dutlab serve` (repeat for several), e.g.
    /// `--serve-arg=--sqlite-synchronous --serve-arg=normal`.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    serve_arg: Vec<String>,
    /// Serve https and wss (a fresh lab PKI, as `dutlab tls init` makes) and connect every
    /// client over TLS: run a scenario with and without it to see what TLS costs.
    #[arg(long)]
    tls: bool,
    /// Where the lab is kept: SQLite in the controller's data directory, or a private
    /// PostgreSQL server started for the run (Debian's `postgresql` package).
    #[arg(long, value_enum, default_value = "sqlite")]
    store: cluster::Store,
    /// Controllers sharing the database (above 1 needs `--store postgres`): the first leads,
    /// the others `serve --follow`. The submit scenario spreads submissions and agents over
    /// all of them.
    #[arg(long, default_value_t = 1)]
    controllers: usize,
    /// Print one JSON document instead of text lines.
    #[arg(long)]
    json: bool,
    /// What to measure.
    #[arg(value_enum, default_value = "all")]
    scenario: Scenario,
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dutlab-loadbench: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("dutlab-loadbench: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if !args.dutlab.is_file() {
        bail!(
            "--dutlab {}: no such file (build it: cargo build --release -p dutlab-cli)",
            args.dutlab.display()
        );
    }
    if args.agents == 0 || args.devices_per_agent == 0 || args.follow_jobs == 0 {
        bail!("--agents, --devices-per-agent and --follow-jobs must be at least 1");
    }
    let several = matches!(args.scenario, Scenario::Submit | Scenario::Failover);
    if args.controllers > 1 && !several {
        bail!("--controllers above 1: only the submit and failover scenarios use several");
    }
    let needed = needed_fds(&args);
    let nofile = raise_nofile(needed)?;
    let machine = machine(nofile);
    if !args.json {
        println!("{}", machine_line(&machine));
    }
    let scenarios: Vec<Scenario> = match args.scenario {
        Scenario::All => vec![
            Scenario::Submit,
            Scenario::Ingest,
            Scenario::Rss,
            Scenario::Followers,
        ],
        one => vec![one],
    };
    let mut results = serde_json::Map::new();
    for s in scenarios {
        let host0 = HostCpu::now();
        let name = match s {
            Scenario::Submit => "submit",
            Scenario::Ingest => "ingest",
            Scenario::Rss => "rss",
            Scenario::Followers => "followers",
            Scenario::ConsoleRtt => "console-rtt",
            Scenario::Forward => "forward",
            Scenario::Viewers => "viewers",
            Scenario::RealDut => "real-dut",
            Scenario::Multinode => "multinode",
            Scenario::Failover => "failover",
            Scenario::All => unreachable!("expanded above"),
        };
        let lab = cluster::Lab::start(
            &args.dutlab,
            &args.serve_arg,
            args.tls,
            args.store,
            args.controllers,
        )
        .await;
        let result = match lab {
            Err(e) => Err((e, None)),
            Ok(mut lab) => {
                let result = match run_one(s, &args, &mut lab).await {
                    Ok(v) => Ok(v),
                    Err(e) => {
                        let cpu = lab.cpu();
                        Err((server::with_log(lab.first(), e), cpu))
                    }
                };
                lab.stop();
                result.map_err(|(e, cpu)| (e, Some(cpu)))
            }
        };
        let mut value = match result {
            Ok(v) => v,
            Err((e, cpu)) => json!({
                "line": format!("{name}: FAILED: {e:#}"),
                "error": format!("{e:#}"),
                "controller_cpu_total_s": cpu,
            }),
        };
        let controller = value["controller_cpu_total_s"].as_f64().unwrap_or(0.0);
        let host = HostCpu::now().since(&host0, controller);
        if let Some(line) = value["line"].as_str() {
            value["line"] = Value::String(format!(
                "{line}; {} on {}; {}",
                controllers_text(args.controllers),
                args.store.name(),
                host.text()
            ));
        }
        value["store"] = Value::String(args.store.name().to_owned());
        value["controllers"] = json!(args.controllers);
        value["host"] = host.json();
        if !args.json {
            println!("{}", value["line"].as_str().unwrap_or_default());
        }
        results.insert(name.to_owned(), value);
    }
    if args.json {
        let doc = json!({
            "machine": machine,
            "command": std::env::args().collect::<Vec<_>>(),
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}

fn controllers_text(n: usize) -> String {
    if n == 1 {
        "1 controller".into()
    } else {
        format!("{n} controllers")
    }
}

async fn run_one(s: Scenario, args: &Args, lab: &mut cluster::Lab) -> anyhow::Result<Value> {
    if s == Scenario::Submit {
        let p = submit::Params {
            agents: args.agents,
            devices_per_agent: args.devices_per_agent,
            jobs: args.jobs,
            job_ms: args.job_ms,
            idle_jobs: args.idle_jobs,
        };
        return submit::run(lab, &p).await;
    }
    if s == Scenario::Failover {
        let p = failover::Params {
            agents: args.agents,
            devices_per_agent: args.devices_per_agent,
        };
        return failover::run(lab, &p).await;
    }
    let ctl = lab.first();
    match s {
        Scenario::Ingest => {
            let p = ingest::Params {
                streams: args.streams,
                lines: args.lines,
            };
            ingest::run(ctl, &p).await
        }
        Scenario::Rss => {
            let p = rss::Params {
                agents: args.agents,
                devices_per_agent: args.devices_per_agent,
            };
            rss::run(ctl, &p).await
        }
        Scenario::Followers => {
            let p = followers::Params {
                followers: args.followers,
                jobs: args.follow_jobs,
                rate: args.follow_rate,
                secs: args.follow_secs,
            };
            followers::run(ctl, &p).await
        }
        Scenario::ConsoleRtt => streams::console_rtt(ctl, &stream_params(args)).await,
        Scenario::Multinode => {
            let p = multinode::Params {
                groups: args.groups,
                messages: args.messages,
            };
            multinode::run(ctl, &p).await
        }
        Scenario::Forward => streams::forward(ctl, &stream_params(args)).await,
        Scenario::Viewers => {
            streams::viewers(ctl, &args.dutlab, &args.serve_arg, &stream_params(args)).await
        }
        Scenario::RealDut => {
            let p = real::Params {
                keystrokes: args.keystrokes,
                ssh_bytes: args.ssh_mb * 1_000_000,
                viewers: args.viewers,
                console_lines: args.console_lines.clamp(1, 9_999_999),
                image_dir: args.image_dir.clone(),
            };
            real::run(ctl, &args.dutlab, &p).await
        }
        Scenario::Submit | Scenario::Failover => unreachable!("run above"),
        Scenario::All => unreachable!("expanded by the caller"),
    }
}

fn stream_params(args: &Args) -> streams::Params {
    streams::Params {
        keystrokes: args.keystrokes,
        forward_bytes: args.forward_mb * 1_000_000,
        viewers: args.viewers,
        console_rate: args.console_rate,
        log_lines: args.log_lines,
    }
}

/// File descriptors the largest scenario needs in this process (and in the controller).
fn needed_fds(args: &Args) -> u64 {
    let agents = match args.scenario {
        Scenario::Rss | Scenario::All => args.agents * 10,
        _ => args.agents,
    };
    let followers = args.followers + args.follow_jobs;
    (agents.max(followers).max(args.streams) + 256) as u64
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (the controller inherits it).
fn raise_nofile(needed: u64) -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).context("cannot read the open-file limit")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .context("cannot raise the soft open-file limit to the hard limit")?;
    }
    if hard < needed {
        bail!(
            "these sizes need about {needed} open files per process but the hard limit \
             (ulimit -Hn) is {hard}; raise it (e.g. in /etc/security/limits.conf) or use \
             smaller --agents/--followers"
        );
    }
    Ok(hard)
}

fn machine(nofile: u64) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim())
        .to_owned();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    json!({
        "nproc": nproc,
        "cpu_model": model,
        "kernel": kernel,
        "mem_total_kib": mem_kib,
        "nofile": nofile,
    })
}

fn machine_line(m: &Value) -> String {
    format!(
        "machine: nproc {}, {}, Linux {}, {} MiB RAM, open-file limit {} (load generator and controller share these CPUs)",
        m["nproc"],
        m["cpu_model"].as_str().unwrap_or_default(),
        m["kernel"].as_str().unwrap_or_default(),
        m["mem_total_kib"].as_u64().unwrap_or(0) / 1024,
        m["nofile"],
    )
}

/// CPU time of the whole host and of this process, to tell how much other processes used.
struct HostCpu {
    at: std::time::Instant,
    busy: f64,
    own: f64,
}

/// What the host's CPUs did during a scenario.
struct HostUse {
    secs: f64,
    busy: f64,
    own: f64,
    controller: f64,
}

impl HostCpu {
    fn now() -> HostCpu {
        // First line of /proc/stat: cpu user nice system idle iowait irq softirq steal ... (ticks)
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|t| t.parse().ok())
            .collect();
        // Idle, iowait and steal (the hypervisor ran someone else) are not work done here.
        let field = |i: usize| ticks.get(i).copied().unwrap_or(0.0);
        let busy = (ticks.iter().sum::<f64>() - field(3) - field(4) - field(7)) / 100.0;
        let own = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let rest: Vec<&str> = s.get(s.rfind(')')? + 2..)?.split_whitespace().collect();
                let u: f64 = rest.get(11)?.parse().ok()?;
                let k: f64 = rest.get(12)?.parse().ok()?;
                Some((u + k) / 100.0)
            })
            .unwrap_or(0.0);
        HostCpu {
            at: std::time::Instant::now(),
            busy,
            own,
        }
    }

    fn since(&self, before: &HostCpu, controller: f64) -> HostUse {
        HostUse {
            secs: self.at.duration_since(before.at).as_secs_f64(),
            busy: self.busy - before.busy,
            own: self.own - before.own,
            controller,
        }
    }
}

impl HostUse {
    fn others(&self) -> f64 {
        (self.busy - self.own - self.controller).max(0.0)
    }

    fn text(&self) -> String {
        format!(
            "host CPU over {:.1} s: loadbench {:.1} s, controller {:.1} s, other processes {:.1} s",
            self.secs,
            self.own,
            self.controller,
            self.others()
        )
    }

    fn json(&self) -> Value {
        let r = |v: f64| (v * 100.0).round() / 100.0;
        json!({
            "seconds": r(self.secs),
            "busy_cpu_s": r(self.busy),
            "loadbench_cpu_s": r(self.own),
            "controller_cpu_s": r(self.controller),
            "other_cpu_s": r(self.others()),
        })
    }
}
