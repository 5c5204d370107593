//! Planner benchmark at the scale scenario: `cargo bench -p herald --bench plan`; at the 5,000-node
//! one with `-- --scale large` (or `HERALD_SCALE=large`).
//! Prints medians; compare figures taken in the same run only (the machine is shared and noisy).

use std::time::{Duration, Instant};

use herald_testkit::scale::{self, Scale};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn main() {
    let scale = Scale::selected_or_exit();
    // The targets: full plan <= 50 ms at 1,000 nodes, <= 250 ms at 5,000.
    let full_target_ms = if scale.nodes > Scale::LARGE.nodes {
        250
    } else {
        50
    };
    let started = Instant::now();
    let state = scale::cluster(scale);
    let config = scale::config();
    println!(
        "scale: {} nodes, {} services, {} endpoints (generated in {:.0?})",
        state.nodes.len(),
        state.services.len(),
        state
            .endpoint_slices
            .values()
            .map(|s| s.endpoints.len())
            .sum::<usize>(),
        started.elapsed()
    );
    let plan = herald_core::planner::plan(&state, &config);
    println!(
        "plan: {} routes, {} paths, {} refusals",
        plan.routes.len(),
        plan.path_count(),
        plan.refusals.len()
    );
    // Fewer under a profiler (callgrind): HERALD_PLAN_RUNS, HERALD_PLAN_CHANGES.
    let count = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
            .max(1)
    };
    let runs = count("HERALD_PLAN_RUNS", 15);
    let changes = count("HERALD_PLAN_CHANGES", 5000);
    let samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(herald_core::planner::plan(&state, &config));
            t.elapsed()
        })
        .collect();
    let full = median(samples.clone());
    println!(
        "full plan: median {:.1} ms over {runs} runs (min {:.1} ms, max {:.1} ms); target <= {full_target_ms} ms",
        full.as_secs_f64() * 1e3,
        samples.iter().min().unwrap().as_secs_f64() * 1e3,
        samples.iter().max().unwrap().as_secs_f64() * 1e3
    );

    // Incremental: one EndpointSlice change to a plan delta.
    let mut incremental =
        herald_core::planner::incremental::IncrementalPlanner::new(state.clone(), config.clone());
    let mut rng = scale::Rng::new(7);
    let mut all = Vec::new();
    let mut local = Vec::new();
    for _ in 0..changes {
        let slice = scale::endpoint_change(incremental.state(), scale, &mut rng);
        let is_local = slice
            .service_key()
            .and_then(|k| incremental.state().services.get(&k))
            .is_some_and(|s| {
                s.external_traffic_policy == herald_core::cluster::TrafficPolicy::Local
            });
        let t = Instant::now();
        std::hint::black_box(incremental.apply(
            herald_core::planner::incremental::Change::EndpointSlice(slice.into()),
        ));
        let elapsed = t.elapsed();
        all.push(elapsed);
        if is_local {
            local.push(elapsed);
        }
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let local_count = local.len();
    println!(
        "incremental: one EndpointSlice change -> plan delta: median {:.1} us over {changes} changes; Local services' slices ({local_count}): median {:.1} us; target <= 50 us",
        us(median(all)),
        us(median(local))
    );
    assert_eq!(
        incremental.plan(),
        &herald_core::planner::plan(incremental.state(), &config),
        "incremental diverged from full"
    );
    println!("  after {changes} changes the incremental plan equals a full recompute");
}
