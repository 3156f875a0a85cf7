//! CPU time and memory of a process from `/proc` (Linux): the generator's own
//! (`/proc/self`) and, given its PID, the broker's.

use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context, Result, bail};

/// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`, 100 on every Linux ABI).
const TICKS_PER_SEC: u64 = 100;

/// A process: `None` is the generator itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Proc(pub(crate) Option<u32>);

impl Proc {
    fn path(self, file: &str) -> String {
        match self.0 {
            Some(pid) => format!("/proc/{pid}/{file}"),
            None => format!("/proc/self/{file}"),
        }
    }

    /// User + system CPU time so far.
    pub(crate) fn cpu(self) -> Result<Duration> {
        let stat = Stat::read(&self.path("stat"))?;
        Ok(ticks(stat.utime + stat.stime))
    }

    /// CPU time so far of this process and its children: those running (user + system)
    /// and those that ended (the parent's `cutime` + `cstime`). For a server made of
    /// processes, such as PostgreSQL's postmaster and its backends.
    pub(crate) fn tree_cpu(self) -> Result<Duration> {
        let Some(root) = self.0 else { bail!("tree_cpu needs a PID") };
        let me = Stat::read(&self.path("stat"))?;
        let mut total = me.utime + me.stime + me.cutime + me.cstime;
        for entry in std::fs::read_dir("/proc").context("reading /proc")?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if pid == root {
                continue;
            }
            // a process may end while we look: skip it
            if let Ok(child) = Stat::read(&format!("/proc/{pid}/stat"))
                && child.ppid == root
            {
                total += child.utime + child.stime;
            }
        }
        Ok(ticks(total))
    }

    /// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
    pub(crate) fn status_kib(self, field: &str) -> Result<u64> {
        let path = self.path("status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        for line in status.lines() {
            if let Some(value) = line.strip_prefix(field).and_then(|v| v.strip_prefix(':')) {
                let kib = value.trim().trim_end_matches("kB").trim();
                return Ok(kib.parse()?);
            }
        }
        bail!("no {field} in {path}")
    }
}

fn ticks(n: u64) -> Duration {
    Duration::from_millis(n * 1000 / TICKS_PER_SEC)
}

/// The fields of `/proc/<pid>/stat` we use, in clock ticks.
struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

impl Stat {
    fn read(path: &str) -> Result<Self> {
        let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        // the command name may hold spaces and parentheses: fields restart after the last ')'
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { bail!("malformed {path}") };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // after ')': state is field 3 of stat(5), so ppid (4) is at 1, utime (14), stime
        // (15), cutime (16) and cstime (17) at 11 to 14
        let field = |i: usize| -> Result<u64> {
            Ok(fields.get(i).with_context(|| format!("malformed {path}"))?.parse::<i64>()?.max(0) as u64)
        };
        Ok(Self {
            ppid: u32::try_from(field(1)?)?,
            utime: field(11)?,
            stime: field(12)?,
            cutime: field(13)?,
            cstime: field(14)?,
        })
    }
}

/// CPU time of the whole machine so far (every core, from `/proc/stat`).
#[derive(Clone, Copy, Default)]
struct Machine {
    /// user + nice + system: processes, ours included.
    processes: Duration,
    /// Interrupts and softirqs (loopback TCP is processed there, for everyone).
    irq: Duration,
    /// Time the hypervisor gave to other guests.
    steal: Duration,
    /// Time some task waited for I/O (`/proc/pressure/io`, "some"; zero when the kernel
    /// has no PSI).
    io_stall: Duration,
}

impl Machine {
    fn now() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let Some(cpu) = stat.lines().next().and_then(|l| l.strip_prefix("cpu ")) else {
            bail!("malformed /proc/stat")
        };
        let t: Vec<u64> = cpu.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
        // user nice system idle iowait irq softirq steal ...
        let Some(&[user, nice, system, _idle, _iowait, irq, softirq, steal]) = t.first_chunk::<8>() else {
            bail!("malformed /proc/stat")
        };
        let d = |ticks: u64| Duration::from_millis(ticks * 1000 / TICKS_PER_SEC);
        Ok(Self {
            processes: d(user + nice + system),
            irq: d(irq + softirq),
            steal: d(steal),
            io_stall: io_stall(),
        })
    }

    fn since(self, before: Self) -> Self {
        Self {
            processes: self.processes.saturating_sub(before.processes),
            irq: self.irq.saturating_sub(before.irq),
            steal: self.steal.saturating_sub(before.steal),
            io_stall: self.io_stall.saturating_sub(before.io_stall),
        }
    }
}

/// Total time some task was stalled on I/O, from `/proc/pressure/io`.
fn io_stall() -> Duration {
    let text = std::fs::read_to_string("/proc/pressure/io").unwrap_or_default();
    let us = text
        .lines()
        .find(|l| l.starts_with("some "))
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("total=")))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    Duration::from_micros(us)
}

/// CPU used by the generator, the broker and the machine over a measured interval.
pub(crate) struct CpuWindow {
    started: Instant,
    generator: Duration,
    broker: Option<(Proc, Duration)>,
    /// The database server's process tree (`--db-pid`), if any.
    db: Option<(Proc, Duration)>,
    machine: Machine,
}

/// What a [`CpuWindow`] measured.
pub(crate) struct CpuUsage {
    pub(crate) wall: Duration,
    pub(crate) generator: Duration,
    pub(crate) broker: Option<Duration>,
    pub(crate) broker_hwm_kib: Option<u64>,
    /// The database server's processes, when its PID is known.
    pub(crate) db: Option<Duration>,
    /// Process CPU of the machine not used by the generator, the broker or the database
    /// server (other processes), when the broker is known.
    pub(crate) others: Option<Duration>,
    /// Interrupt and softirq time of the machine (loopback TCP for everyone).
    pub(crate) irq: Duration,
    /// Time stolen by the hypervisor.
    pub(crate) steal: Duration,
    /// Time some task on the machine was stalled on I/O (e.g. waiting for an fsync).
    pub(crate) io_stall: Duration,
}

impl CpuWindow {
    pub(crate) fn start(broker: Option<u32>) -> Result<Self> {
        let broker = match broker {
            Some(pid) => Some((Proc(Some(pid)), Proc(Some(pid)).cpu()?)),
            None => None,
        };
        let db = match db_pid() {
            Some(pid) => Some((Proc(Some(pid)), Proc(Some(pid)).tree_cpu()?)),
            None => None,
        };
        Ok(Self {
            started: Instant::now(),
            generator: Proc(None).cpu()?,
            broker,
            db,
            machine: Machine::now()?,
        })
    }

    pub(crate) fn stop(&self) -> Result<CpuUsage> {
        let wall = self.started.elapsed();
        let generator = Proc(None).cpu()?.saturating_sub(self.generator);
        let (broker, broker_hwm_kib) = match self.broker {
            Some((p, before)) => (Some(p.cpu()?.saturating_sub(before)), Some(p.status_kib("VmHWM")?)),
            None => (None, None),
        };
        let db = match self.db {
            Some((p, before)) => Some(p.tree_cpu()?.saturating_sub(before)),
            None => None,
        };
        let machine = Machine::now()?.since(self.machine);
        let others = broker.map(|b| machine.processes.saturating_sub(generator + b + db.unwrap_or_default()));
        Ok(CpuUsage {
            wall,
            generator,
            broker,
            broker_hwm_kib,
            db,
            others,
            irq: machine.irq,
            steal: machine.steal,
            io_stall: machine.io_stall,
        })
    }
}

/// The database server's PID (`--db-pid`), set once at start-up.
static DB_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Measures the CPU of `pid` and its children in every [`CpuWindow`] from now on.
pub(crate) fn set_db_pid(pid: u32) {
    let _ = DB_PID.set(pid);
}

fn db_pid() -> Option<u32> {
    DB_PID.get().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_cpu_and_memory() {
        let me = Proc(None);
        assert!(me.cpu().is_ok());
        assert!(me.status_kib("VmRSS").unwrap() > 0);
        assert!(me.status_kib("NoSuchField").is_err());
        let pid = std::process::id();
        // its own time first: the tree's, read after, cannot be less (CPU time only grows)
        let own = Proc(Some(pid)).cpu().unwrap();
        assert!(Proc(Some(pid)).tree_cpu().unwrap() >= own);
        assert!(me.tree_cpu().is_err());
    }
}
