//! A scenario's results: printed for people, one `key: value` per line, then as one
//! `RESULT key=value ...` line for scripts (`bench/run.sh` reads it).

use std::fmt::Display;
use std::time::Duration;

use crate::procstat::CpuUsage;

pub(crate) struct Report {
    scenario: &'static str,
    fields: Vec<(&'static str, String)>,
}

impl Report {
    pub(crate) fn new(scenario: &'static str) -> Self {
        Self { scenario, fields: Vec::new() }
    }

    pub(crate) fn add(&mut self, key: &'static str, value: impl Display) -> &mut Self {
        self.fields.push((key, value.to_string()));
        self
    }

    /// A rate with no decimals.
    pub(crate) fn add_rate(&mut self, key: &'static str, count: u64, over: Duration) -> &mut Self {
        self.add(key, format!("{:.0}", per_sec(count, over)))
    }

    /// CPU of the generator and the broker over the measured window, in seconds and in
    /// percent of one core.
    pub(crate) fn add_cpu(&mut self, cpu: &CpuUsage) -> &mut Self {
        let pct = |d: Duration| 100.0 * d.as_secs_f64() / cpu.wall.as_secs_f64().max(1e-9);
        self.add("wall_s", format!("{:.2}", cpu.wall.as_secs_f64()));
        self.add("gen_cpu_s", format!("{:.2}", cpu.generator.as_secs_f64()));
        self.add("gen_cpu_pct", format!("{:.0}", pct(cpu.generator)));
        if let Some(b) = cpu.broker {
            self.add("broker_cpu_s", format!("{:.2}", b.as_secs_f64()));
            self.add("broker_cpu_pct", format!("{:.0}", pct(b)));
        }
        if let Some(d) = cpu.db {
            self.add("db_cpu_s", format!("{:.2}", d.as_secs_f64()));
            self.add("db_cpu_pct", format!("{:.0}", pct(d)));
        }
        if let Some(o) = cpu.others {
            self.add("others_cpu_pct", format!("{:.0}", pct(o)));
        }
        self.add("irq_cpu_pct", format!("{:.0}", pct(cpu.irq)));
        self.add("steal_cpu_pct", format!("{:.0}", pct(cpu.steal)));
        self.add("io_stall_pct", format!("{:.0}", pct(cpu.io_stall)));
        if let Some(kib) = cpu.broker_hwm_kib {
            self.add("broker_hwm_kib", kib);
        }
        self
    }

    /// `count` per second of broker CPU: what the broker does with the CPU it got,
    /// which other load on the machine changes less than the rate.
    pub(crate) fn add_per_broker_cpu(&mut self, key: &'static str, count: u64, cpu: &CpuUsage) -> &mut Self {
        if let Some(b) = cpu.broker {
            self.add_rate(key, count, b);
        }
        self
    }

    /// `count` per second of CPU of the broker and the database server together (when
    /// `--db-pid` is given): what the whole stack costs.
    pub(crate) fn add_per_stack_cpu(&mut self, key: &'static str, count: u64, cpu: &CpuUsage) -> &mut Self {
        if let (Some(b), Some(d)) = (cpu.broker, cpu.db) {
            self.add_rate(key, count, b + d);
        }
        self
    }

    pub(crate) fn print(&self) {
        println!("scenario: {}", self.scenario);
        for (k, v) in &self.fields {
            println!("{k}: {v}");
        }
        let line: Vec<String> = self.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("RESULT scenario={} {}", self.scenario, line.join(" "));
    }
}

pub(crate) fn per_sec(count: u64, over: Duration) -> f64 {
    if over.is_zero() { 0.0 } else { count as f64 / over.as_secs_f64() }
}
