//! The benchmark's Markdown tables: throughput per workload with the same-round ratios and how stable their medians are, and each tracer's cost per connection and per request, program by program.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::{
    bench::{BenchArgs, COST_SECONDS, Config, Run, Workload, clock_tick_seconds, cost_rate},
    bpf_stats::ProgramRun,
    ratios::{self, MIN_ROUNDS_FOR_HALVES, SameRound},
};

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn percent(ratio: f64) -> String {
    format!("{:.1}%", 100.0 * ratio)
}

/// What a workload is, for the sentence above its table.
fn describe(workload: Workload, args: &BenchArgs) -> String {
    let rounds = format!(
        "{} rounds of {} s per configuration, interleaved (each round starts one configuration further along)",
        args.rounds, args.seconds
    );
    match workload {
        Workload::Churn => format!(
            "Churn on loopback, {rounds}; {} client and {} server threads; {}; half the connections closed by the client first, half by the server.",
            args.threads,
            args.threads,
            args.rate
                .map_or("as fast as possible".to_string(), |r| format!(
                    "aiming at {r} connections/s"
                ))
        ),
        Workload::KeepAlive => format!(
            "Keep-alive request/response on loopback, {rounds}; {} persistent connections, each with a client and a server thread, a {}-byte request and a {}-byte reply at a time on each; as fast as possible.",
            args.keepalive_connections, args.request_bytes, args.request_bytes
        ),
    }
}

/// The throughput table of one workload, then its same-round ratios.
pub fn throughput(
    workload: Workload,
    configs: &[Config],
    rounds: &BTreeMap<(Workload, Config), Vec<Run>>,
    args: &BenchArgs,
) -> String {
    let unit = workload.unit();
    let get = |c: Config| rounds.get(&(workload, c)).map_or(&[][..], Vec::as_slice);
    let rates = |c: Config| get(c).iter().map(Run::per_second).collect::<Vec<_>>();
    let baseline = rates(Config::NoTracer);
    let baseline_mean = mean(&baseline);
    let mut s = describe(workload, args);
    let _ = write!(
        s,
        "\n\n| configuration | {unit}s/s (per round) | vs no tracer | vs no tracer in the same round (median) | tracer CPU (cores) | CPU per 10k {unit}s/s | tracer CPU per {unit} | peak RSS | events | dropped | missed runs |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut same_rounds = Vec::new();
    for &config in configs {
        let r = get(config);
        let per_round = rates(config);
        let rate = mean(&per_round);
        let same = SameRound::new(&per_round, &baseline);
        let failures: u64 = r.iter().map(|x| x.failures).sum();
        let failed = if failures == 0 {
            String::new()
        } else {
            match workload {
                Workload::Churn => format!(" ({failures} failed connects)"),
                Workload::KeepAlive => format!(" ({failures} broken connections)"),
            }
        };
        let rounds_cell = per_round
            .iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ");
        let tracer_cells = if config == Config::NoTracer {
            vec!["-".to_string(); 7]
        } else {
            let cores = mean(&r.iter().map(Run::cores).collect::<Vec<_>>());
            let cpu_ns = mean(&r.iter().map(Run::cpu_ns_per_unit).collect::<Vec<_>>());
            let sum = |f: fn(&Run) -> Option<u64>| -> String {
                let v: Vec<u64> = r.iter().filter_map(f).collect();
                if v.is_empty() {
                    "-".into()
                } else {
                    v.iter().sum::<u64>().to_string()
                }
            };
            vec![
                format!("{cores:.3}"),
                format!("{:.3}", cores / (rate / 10_000.0).max(f64::MIN_POSITIVE)),
                format!("{cpu_ns:.0} ns"),
                format!(
                    "{:.1} MB",
                    r.iter().map(|x| x.peak_rss_kb).max().unwrap_or(0) as f64 / 1024.0
                ),
                sum(|x| x.events),
                sum(|x| x.dropped),
                r.iter().map(Run::recursion_misses).sum::<u64>().to_string(),
            ]
        };
        let _ = writeln!(
            s,
            "| {}{failed} | {rate:.0} ({rounds_cell}) | {} | {} | {} |",
            config.name(),
            percent(rate / baseline_mean.max(f64::MIN_POSITIVE)),
            percent(same.median),
            tracer_cells.join(" | "),
        );
        if config != Config::NoTracer {
            same_rounds.push((config, same));
        }
    }
    s.push('\n');
    s.push_str(&same_round_table(&same_rounds, args.rounds));
    s
}

/// Round by round ratios, their median and range, and the medians of the
/// two halves of the rounds: how far the median moves is how stable it is.
fn same_round_table(same_rounds: &[(Config, SameRound)], rounds: usize) -> String {
    let half = rounds / 2;
    let mut s = format!(
        "Same-round ratios (each tracer's throughput over the no-tracer run of its round):\n\n| configuration | round by round | median | range | median of rounds 1-{half} / {}-{rounds} | shift |\n|---|---|---|---|---|---|\n",
        half + 1
    );
    for (config, same) in same_rounds {
        let per_round = same
            .per_round
            .iter()
            .map(|r| percent(*r))
            .collect::<Vec<_>>()
            .join(", ");
        let (halves, shift) = match (same.halves, same.shift()) {
            (Some((a, b)), Some(d)) => (
                format!("{} / {}", percent(a), percent(b)),
                format!("{:.1} points", 100.0 * d),
            ),
            _ => ("-".to_string(), "-".to_string()),
        };
        let _ = writeln!(
            s,
            "| {} | {per_round} | {} | {}-{} ({:.1} points) | {halves} | {shift} |",
            config.name(),
            percent(same.median),
            percent(same.min),
            percent(same.max),
            100.0 * (same.max - same.min),
        );
    }
    s.push('\n');
    let widest = same_rounds
        .iter()
        .filter_map(|(c, same)| Some((same.shift()?, *c)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if rounds < MIN_ROUNDS_FOR_HALVES {
        let _ = writeln!(
            s,
            "Stability of the medians: not judged with fewer than {MIN_ROUNDS_FOR_HALVES} rounds (run `--rounds 6` or more)."
        );
    } else if let Some((shift, config)) = widest {
        let _ = writeln!(
            s,
            "Stability of the medians: between the first and the second half of the rounds, the median of the same-round ratios moved by at most {:.1} points ({}). Differences between configurations, or from a target, smaller than that are within this run's noise; if it is more than a few points, run more rounds.",
            100.0 * shift,
            config.name()
        );
    }
    s
}

/// A count of ns (or units per second): a decimal below 10, where the
/// targets are tens of ns.
fn ns(x: f64) -> String {
    if x.abs() < 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

/// The median of a figure over the cost runs, and each run's value.
fn median_and_runs(runs: &[Run], f: fn(&Run) -> f64) -> String {
    let v: Vec<f64> = runs.iter().map(f).collect();
    let each = v.iter().map(|x| ns(*x)).collect::<Vec<_>>().join(", ");
    if v.len() > 1 {
        format!("{} ({each})", ns(ratios::median(&v)))
    } else {
        each
    }
}

/// Every program of a configuration over all its cost runs, by name.
fn programs(runs: &[Run]) -> Vec<ProgramRun> {
    let mut by_name: BTreeMap<String, ProgramRun> = BTreeMap::new();
    for p in runs.iter().flat_map(|r| &r.programs) {
        let total = by_name.entry(p.name.clone()).or_insert_with(|| ProgramRun {
            name: p.name.clone(),
            ..ProgramRun::default()
        });
        total.run_time_ns += p.run_time_ns;
        total.runs += p.runs;
        total.recursion_misses += p.recursion_misses;
    }
    by_name.into_values().collect()
}

/// Each tracer's cost per connection and per request, then program by
/// program.
pub fn costs(
    plan: &[(Workload, Vec<Config>)],
    costs: &BTreeMap<(Workload, Config), Vec<Run>>,
    args: &BenchArgs,
) -> String {
    let seconds = args.seconds.min(COST_SECONDS);
    let aims: Vec<String> = plan
        .iter()
        .map(|(w, _)| {
            let aim = match cost_rate(*w, args) {
                Some(rate) => format!("aiming at {rate} {}s/s", w.unit()),
                None => "as fast as possible".to_string(),
            };
            // What one clock tick of tracer CPU is worth per unit of work
            // at the work a run did (the median run).
            let done: Vec<f64> = costs
                .iter()
                .filter(|((workload, _), _)| workload == w)
                .flat_map(|(_, runs)| runs.iter().map(|r| r.done as f64))
                .collect();
            let tick_ns = clock_tick_seconds() * 1e9 / ratios::median(&done).max(1.0);
            format!(
                "{} {aim}, where one tick of tracer CPU is {tick_ns:.0} ns per {}",
                w.name(),
                w.unit()
            )
        })
        .collect();
    let mut s = format!(
        "Tracer cost, from separate runs with the kernel's BPF run-time statistics on (`kernel.bpf_stats_enabled`, put back as it was after): {} run(s) of {seconds} s per tracer and workload, interleaved; {}. Kernel: the run time of the tracer's programs (found through its /proc/PID/fd, read from fdinfo), over every run they made on this host during the run, divided by the units of work the benchmark did; the statistics themselves add a little to every run. Tracer CPU: utime+stime of the tracer's process (/proc/PID/stat, in clock ticks) over the same run. Median over the runs, each run in parentheses.\n\n| workload | configuration | achieved rate | kernel ns per unit of work | tracer CPU ns per unit | total ns per unit |\n|---|---|---|---|---|---|\n",
        args.cost_rounds,
        aims.join("; "),
    );
    for (workload, configs) in plan {
        for config in configs {
            let Some(runs) = costs.get(&(*workload, *config)) else {
                continue;
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} {}s/s | {} | {} | {} |",
                workload.label(),
                config.name(),
                median_and_runs(runs, Run::per_second),
                workload.unit(),
                median_and_runs(runs, Run::kernel_ns_per_unit),
                median_and_runs(runs, Run::cpu_ns_per_unit),
                median_and_runs(runs, |r| r.kernel_ns_per_unit() + r.cpu_ns_per_unit()),
            );
        }
    }
    s.push_str("\nProgram by program, over all the cost runs:\n\n| workload | configuration | program | mean ns per run | runs per unit | ns per unit | runs | recursion misses |\n|---|---|---|---|---|---|---|---|\n");
    for (workload, configs) in plan {
        for config in configs {
            let Some(runs) = costs.get(&(*workload, *config)) else {
                continue;
            };
            let done = runs.iter().map(|r| r.done).sum::<u64>().max(1) as f64;
            for p in programs(runs) {
                let per_run = if p.runs > 0 {
                    p.run_time_ns as f64 / p.runs as f64
                } else {
                    0.0
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | `{}` | {per_run:.0} | {:.3} | {} | {} | {} |",
                    workload.label(),
                    config.name(),
                    p.name,
                    p.runs as f64 / done,
                    ns(p.run_time_ns as f64 / done),
                    p.runs,
                    p.recursion_misses,
                );
            }
        }
    }
    s
}

/// `record`'s file: its size per unit of work, and how fast `report
/// --from` reads it back (units of work replayed per second), from the
/// cost runs.
pub fn recordings(
    plan: &[(Workload, Vec<Config>)],
    costs: &BTreeMap<(Workload, Config), Vec<Run>>,
) -> String {
    let mut s = String::from(
        "Recordings (`tcplinger record -o FILE` during the cost runs above, then `tcplinger report --from FILE --format json > /dev/null`): median over the runs, each run in parentheses.\n\n| workload | bytes of recording per unit of work | replay: units of work per second | file size |\n|---|---|---|---|\n",
    );
    for (workload, _) in plan {
        let Some(runs) = costs.get(&(*workload, Config::Record)) else {
            continue;
        };
        let per_unit = |r: &Run| {
            r.recording
                .map_or(0.0, |(bytes, _)| bytes as f64 / (r.done as f64).max(1.0))
        };
        let replayed = |r: &Run| {
            r.recording.map_or(0.0, |(_, took)| {
                r.done as f64 / took.as_secs_f64().max(1e-9)
            })
        };
        let size = |r: &Run| {
            r.recording
                .map_or(0.0, |(bytes, _)| bytes as f64 / 1_048_576.0)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} MiB |",
            workload.label(),
            median_and_runs(runs, per_unit),
            median_and_runs(runs, replayed),
            median_and_runs(runs, size),
        );
    }
    s
}
