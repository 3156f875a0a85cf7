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
        let path = self.path("stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // the command name may hold spaces and parentheses: fields restart after the last ')'
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { bail!("malformed {path}") };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // after ')': state is field 3 of stat(5), so utime (14) and stime (15) are at 11, 12
        let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else { bail!("malformed {path}") };
        let ticks = utime.parse::<u64>()? + stime.parse::<u64>()?;
        Ok(Duration::from_millis(ticks * 1000 / TICKS_PER_SEC))
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

/// CPU time of the whole machine so far (every core, from `/proc/stat`).
#[derive(Clone, Copy, Default)]
struct Machine {
    /// user + nice + system: processes, ours included.
    processes: Duration,
    /// Interrupts and softirqs (loopback TCP is processed there, for everyone).
    irq: Duration,
    /// Time the hypervisor gave to other guests.
    steal: Duration,
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
        Ok(Self { processes: d(user + nice + system), irq: d(irq + softirq), steal: d(steal) })
    }

    fn since(self, before: Self) -> Self {
        Self {
            processes: self.processes.saturating_sub(before.processes),
            irq: self.irq.saturating_sub(before.irq),
            steal: self.steal.saturating_sub(before.steal),
        }
    }
}

/// CPU used by the generator, the broker and the machine over a measured interval.
pub(crate) struct CpuWindow {
    started: Instant,
    generator: Duration,
    broker: Option<(Proc, Duration)>,
    machine: Machine,
}

/// What a [`CpuWindow`] measured.
pub(crate) struct CpuUsage {
    pub(crate) wall: Duration,
    pub(crate) generator: Duration,
    pub(crate) broker: Option<Duration>,
    pub(crate) broker_hwm_kib: Option<u64>,
    /// Process CPU of the machine not used by the generator or the broker (other
    /// processes), when the broker is known.
    pub(crate) others: Option<Duration>,
    /// Interrupt and softirq time of the machine (loopback TCP for everyone).
    pub(crate) irq: Duration,
    /// Time stolen by the hypervisor.
    pub(crate) steal: Duration,
}

impl CpuWindow {
    pub(crate) fn start(broker: Option<u32>) -> Result<Self> {
        let broker = match broker {
            Some(pid) => Some((Proc(Some(pid)), Proc(Some(pid)).cpu()?)),
            None => None,
        };
        Ok(Self { started: Instant::now(), generator: Proc(None).cpu()?, broker, machine: Machine::now()? })
    }

    pub(crate) fn stop(&self) -> Result<CpuUsage> {
        let wall = self.started.elapsed();
        let generator = Proc(None).cpu()?.saturating_sub(self.generator);
        let (broker, broker_hwm_kib) = match self.broker {
            Some((p, before)) => (Some(p.cpu()?.saturating_sub(before)), Some(p.status_kib("VmHWM")?)),
            None => (None, None),
        };
        let machine = Machine::now()?.since(self.machine);
        let others = broker.map(|b| machine.processes.saturating_sub(generator + b));
        Ok(CpuUsage {
            wall,
            generator,
            broker,
            broker_hwm_kib,
            others,
            irq: machine.irq,
            steal: machine.steal,
        })
    }
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
    }
}
