//! Planner benchmark at the scale scenario: `cargo bench -p herald --bench plan`.
//! Prints medians; compare figures taken in the same run only (the machine is shared and noisy).

use std::time::{Duration, Instant};

use herald_testkit::scale::{self, Scale};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let scale = Scale::LARGE;
    let started = Instant::now();
    let state = scale::cluster(scale);
    let config = scale::config();
    println!(
        "scale: {} nodes, {} services, {} endpoints (generated in {:.0?})",
        state.nodes.len(),
        state.services.len(),
        state.endpoint_slices.values().map(|s| s.endpoints.len()).sum::<usize>(),
        started.elapsed()
    );
    let plan = herald_core::planner::plan(&state, &config);
    println!("plan: {} routes, {} paths, {} refusals", plan.routes.len(), plan.path_count(), plan.refusals.len());
    let runs = 15;
    let samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(herald_core::planner::plan(&state, &config));
            t.elapsed()
        })
        .collect();
    let full = median(samples.clone());
    println!("full plan: median {:.1} ms over {runs} runs (min {:.1} ms, max {:.1} ms); target <= 100 ms",
        full.as_secs_f64() * 1e3,
        samples.iter().min().unwrap().as_secs_f64() * 1e3,
        samples.iter().max().unwrap().as_secs_f64() * 1e3);

    // Incremental: one EndpointSlice change to a plan delta.
    let mut incremental = herald_core::planner::incremental::IncrementalPlanner::new(state.clone(), config.clone());
    let mut rng = scale::Rng::new(7);
    let mut all = Vec::new();
    let mut local = Vec::new();
    for _ in 0..5000 {
        let slice = scale::endpoint_change(incremental.state(), scale, &mut rng);
        let is_local = slice
            .service_key()
            .and_then(|k| incremental.state().services.get(&k))
            .is_some_and(|s| s.external_traffic_policy == herald_core::cluster::TrafficPolicy::Local);
        let t = Instant::now();
        std::hint::black_box(incremental.apply(herald_core::planner::incremental::Change::EndpointSlice(slice.into())));
        let elapsed = t.elapsed();
        all.push(elapsed);
        if is_local {
            local.push(elapsed);
        }
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let local_count = local.len();
    println!(
        "incremental: one EndpointSlice change -> plan delta: median {:.1} us over 5000 changes; Local services' slices ({local_count}): median {:.1} us; target <= 50 us",
        us(median(all)),
        us(median(local))
    );
    assert_eq!(incremental.plan(), &herald_core::planner::plan(incremental.state(), &config), "incremental diverged from full");
    println!("  after 5000 changes the incremental plan equals a full recompute");
}
