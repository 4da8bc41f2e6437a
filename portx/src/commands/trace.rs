//! `portx trace`: stream events to stdout until Ctrl-C, SIGTERM or `--duration`.

use std::io::{self, Write as _};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{EventFilterArgs, TraceArgs},
    events::decode,
    events::filter::{Filter, describe_kernel},
    events::sock_owners::SockOwners,
    kernel::cgroups::{CgroupNames, HostRoot},
    kernel::loader::{LoadOptions, Probes},
    kernel::netns,
    kernel::preflight,
    views::output::{Clock, WIDE_COLUMNS, text_header, text_line, write_json_line},
    workload::Names as _,
};

/// Says which attach point serves each need and why better ones were not used.
pub fn print_hooks(hooks: &[crate::kernel::loader::HookPath]) {
    for h in hooks {
        eprintln!("portx: {} via {}", h.hook, h.path);
        for r in &h.rejected {
            eprintln!("portx:   not {r}");
        }
    }
}

/// Counts printed on exit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Records read from the ring buffer (what passed the in-kernel filter).
    pub seen: u64,
    /// Records that passed the filter and were printed.
    pub shown: u64,
    /// Records that could not be decoded.
    pub undecodable: u64,
    /// Events lost in the kernel because the ring buffer was full.
    pub dropped: u64,
    /// Program runs the kernel skipped (nested on one CPU), whose events are lost.
    pub missed_runs: u64,
}

impl Stats {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "portx: {} events seen, {} shown, {} dropped",
            self.seen, self.shown, self.dropped
        );
        if self.undecodable > 0 {
            s.push_str(&format!(", {} undecodable", self.undecodable));
        }
        if self.missed_runs > 0 {
            s.push_str(&format!(
                ", {} program runs skipped by the kernel (nested on one CPU)",
                self.missed_runs
            ));
        }
        s
    }
}

pub fn filter_from(args: &EventFilterArgs) -> anyhow::Result<Filter> {
    let netns = match &args.netns {
        Some(arg) => Some(netns::resolve(arg)?),
        None => None,
    };
    Ok(Filter {
        pid: args.pid,
        comm: args.comm.clone(),
        port: args.port,
        netns,
        errors_only: args.errors,
    })
}

pub async fn run(args: TraceArgs, verbose: bool) -> anyhow::Result<()> {
    preflight::check_pid(args.filter.pid)?;
    crate::kernel::cgroups::use_host_root(&args.host.host_root)?;
    preflight::check_privileges()?;
    preflight::check_btf()?;
    let filter = filter_from(&args.filter)?;
    let mut probes = Probes::load(LoadOptions {
        ring_bytes: args.ring_mib << 20,
        filter: filter.kernel(),
        ..LoadOptions::default()
    })?;
    if verbose {
        let s = &probes.setup;
        eprintln!("portx: tracefs at {}", s.tracefs.display());
        for a in &s.attached {
            eprintln!("portx: attached {a}");
        }
        print_hooks(&s.hooks);
        eprintln!("portx: {}", probes.state_policy());
        eprintln!("portx: {}", probes.wakeup_policy());
        eprintln!("portx: {}", describe_kernel(&s.config.filter));
        eprintln!("portx: kernel offsets from BTF: {:?}", s.config.kernel);
        for m in &s.btf_missing {
            eprintln!("portx: degraded: {m}");
        }
    }
    let names = CgroupNames::new(HostRoot::current());
    if verbose {
        eprintln!("portx: {}", names.describe());
    }
    let wide = args.wide || terminal_is_wide();
    let mut reader = probes.events()?;
    let clock = Clock::now();
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    if !args.json {
        writeln!(out, "{}", text_header(wide))?;
        out.flush()?;
    }
    // What serves each need is in -v; here just the one line to know it is running.
    let needs: Vec<String> = probes
        .setup
        .hooks
        .iter()
        .map(|h| format!("{} via {}", h.hook, h.kind()))
        .collect();
    eprintln!("portx: tracing ({}); Ctrl-C to stop", needs.join(", "));

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let sleep = crate::commands::stop_after(args.duration);
    tokio::pin!(sleep);

    let mut printer = Printer {
        filter,
        clock,
        json: args.json,
        wide,
        names,
        stats: Stats::default(),
        owners: SockOwners::default(),
        out,
        write_err: None,
    };
    loop {
        tokio::select! {
            r = reader.readable() => {
                r?;
                reader.drain(|b| {
                    printer.handle(b);
                    true
                });
                printer.flush();
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut sleep => break,
        }
        if printer.write_err.is_some() {
            break;
        }
    }
    // Whatever the kernel wrote before we stopped still counts.
    reader.drain(|b| {
        printer.handle(b);
        true
    });
    printer.flush();
    printer.stats.dropped = probes.dropped()?;
    printer.stats.missed_runs = probes.missed_runs();
    eprintln!("{}", printer.stats.summary());
    match printer.write_err {
        None => Ok(()),
        Some(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Some(e) => Err(e).context("writing to stdout"),
    }
}

/// Whether stdout is a terminal with room for the WORKLOAD column.
fn terminal_is_wide() -> bool {
    use std::io::IsTerminal as _;
    io::stdout().is_terminal()
        && crossterm::terminal::size().is_ok_and(|(cols, _)| cols >= WIDE_COLUMNS)
}

/// Decodes, filters and prints records, remembering the first write error
/// (a closed pipe ends the trace quietly).
struct Printer<W: io::Write> {
    filter: Filter,
    clock: Clock,
    json: bool,
    /// The WORKLOAD column in text output.
    wide: bool,
    names: CgroupNames,
    stats: Stats,
    owners: SockOwners,
    out: W,
    write_err: Option<io::Error>,
}

impl<W: io::Write> Printer<W> {
    fn handle(&mut self, bytes: &[u8]) {
        self.stats.seen += 1;
        let Ok(mut ev) = decode(bytes) else {
            self.stats.undecodable += 1;
            return;
        };
        // Before the filter, which may select by process.
        self.owners.join(&mut ev);
        if !self.filter.matches(&ev) {
            return;
        }
        self.stats.shown += 1;
        let named = (self.json || self.wide)
            .then(|| self.names.name(ev.cgroup_id))
            .flatten();
        let written = if self.json {
            write_json_line(&mut self.out, &ev, named.as_deref())
        } else {
            let label = named.as_ref().map(|n| n.workload.label());
            let column = self.wide.then(|| label.as_deref().unwrap_or(""));
            writeln!(self.out, "{}", text_line(&ev, &self.clock, column))
        };
        if let Err(e) = written {
            self.write_err.get_or_insert(e);
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            self.write_err.get_or_insert(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_drops() {
        let s = Stats {
            seen: 10,
            shown: 4,
            undecodable: 0,
            dropped: 2,
            missed_runs: 0,
        };
        assert_eq!(s.summary(), "portx: 10 events seen, 4 shown, 2 dropped");
        let s = Stats {
            undecodable: 1,
            ..s
        };
        assert!(s.summary().ends_with(", 1 undecodable"));
        let s = Stats {
            missed_runs: 3,
            ..s
        };
        assert!(
            s.summary()
                .ends_with(", 3 program runs skipped by the kernel (nested on one CPU)"),
            "{}",
            s.summary()
        );
    }
}
