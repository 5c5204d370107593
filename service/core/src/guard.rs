//! The announcement guard: what stands between the planner and the fabric.
//!
//! - Flap damping: a path (prefix, next hop) that went away is re-announced only once it has been
//!   back for `holdDown` since it last went away. Withdrawals are never delayed: traffic must leave a
//!   node without endpoints at once; it is the coming back that waits until the flapping stops.
//! - `maxRoutes`: above it, routes already announced stay, new ones are refused (ranges before host
//!   routes), and an alarm says so. A runaway cluster state cannot flood the fabric.
//!
//! - The withdrawal brake ([`crate::brake`]), first: a wave of nodes lost at once (a sick control
//!   plane) does not withdraw their paths. Damping then sees the held paths as never gone.
//!
//! Pure like the planner: the caller passes the time, and is told when to call again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::brake::{Brake, BrakeConfig, BrakeRelease, BrakeStatus};
use crate::plan::{NextHop, Plan, Routes};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardConfig {
    pub hold_down: Duration,
    pub max_routes: Option<usize>,
    /// The withdrawal brake; `None`: off.
    pub brake: Option<BrakeConfig>,
}

/// What the guard remembers between plans.
#[derive(Debug, Default)]
pub struct Guard {
    config: GuardConfig,
    /// When each path last went away from the planner's output, while that is within hold-down.
    withdrawn_at: HashMap<(IpNet, NextHop), Instant>,
    /// The last raw plan, to see which paths went away (a copy shares it, see [`Plan`]).
    last_raw: Plan,
    /// The routes of the last guarded plan (the ones announced), kept first when over maxRoutes.
    announced: Routes,
    brake: Option<Brake>,
}

/// A guarded plan, and when the guard wants to look again (a held path becomes due).
pub struct Guarded {
    pub plan: Plan,
    pub wake_at: Option<Instant>,
    /// What the withdrawal brake holds, while it is engaged.
    pub brake: Option<BrakeStatus>,
}

impl Guard {
    pub fn new(config: GuardConfig) -> Self {
        Guard {
            config,
            brake: config.brake.map(Brake::new),
            ..Default::default()
        }
    }

    pub fn is_active(&self) -> bool {
        !self.config.hold_down.is_zero()
            || self.config.max_routes.is_some()
            || self.config.brake.is_some()
    }

    /// An operator's release of the withdrawal brake (takes effect at the next [`Guard::apply`]):
    /// whether it was engaged.
    pub fn release_brake(&mut self, by: &str) -> bool {
        self.brake.as_mut().is_some_and(|b| b.release_now(by))
    }

    /// How the withdrawal brake's last engagement ended.
    pub fn last_brake_release(&self) -> Option<&BrakeRelease> {
        self.brake.as_ref().and_then(Brake::last_release)
    }

    /// Applies damping and the route limit to the planner's plan at time `now`. Costs in proportion
    /// to the routes that changed since the last call and the paths held, not to the plan's size.
    pub fn apply(&mut self, raw: &Plan, now: Instant) -> Guarded {
        let braked;
        let raw = match &mut self.brake {
            Some(brake) => {
                let held_changed;
                (braked, held_changed) = brake.apply(raw, now);
                if held_changed {
                    // A held path put back is not a flap: damping must not hold it back in turn.
                    for (prefix, hop) in brake.held_paths() {
                        self.withdrawn_at.remove(&(prefix, hop.clone()));
                    }
                }
                &braked
            }
            None => raw,
        };
        let mut plan = raw.clone();
        let mut wake_at: Option<Instant> = self.brake.as_ref().and_then(Brake::wake_at);
        if !self.config.hold_down.is_zero() {
            for (prefix, before, after) in self.last_raw.route_changes(raw) {
                for hop in before.iter().flat_map(|r| r.next_hops.iter()) {
                    if !after.is_some_and(|r| r.next_hops.contains(hop)) {
                        self.withdrawn_at.insert((prefix, hop.clone()), now);
                    }
                }
            }
            let hold = self.config.hold_down;
            self.withdrawn_at
                .retain(|_, at| now.duration_since(*at) < hold);
            let mut held = 0usize;
            let mut emptied = Vec::new();
            for ((prefix, hop), at) in &self.withdrawn_at {
                // Only paths the planner wants again are held; `plan` still has every raw path of
                // `prefix` but those already held (one entry per path), so this looks at raw.
                if !plan
                    .routes
                    .get(prefix)
                    .is_some_and(|r| r.next_hops.contains(hop))
                {
                    continue;
                }
                if let Some(route) = plan.routes.get_mut(prefix) {
                    let route = Arc::make_mut(route);
                    route.next_hops.remove(hop);
                    if route.next_hops.is_empty() {
                        emptied.push(*prefix);
                    }
                    held += 1;
                    let due = *at + hold;
                    wake_at = Some(wake_at.map_or(due, |w| w.min(due)));
                }
            }
            for prefix in emptied {
                plan.routes.remove(&prefix);
            }
            if held > 0 {
                plan.notes.push(format!(
                    "{held} flapping path(s) held down for up to {hold:?} before re-announcement"
                ));
            }
        }
        self.last_raw = raw.clone();
        plan.max_routes_refused = 0;
        if let Some(max) = self
            .config
            .max_routes
            .filter(|max| plan.routes.len() > *max)
        {
            let total = plan.routes.len();
            // Keep what is announced, then ranges, then the rest in prefix order.
            let mut order: Vec<IpNet> = plan.routes.keys().copied().collect();
            order.sort_by_key(|p| {
                (
                    !self.announced.contains_key(p),
                    !plan.routes[p].kind.is_range(),
                    *p,
                )
            });
            let refused: Vec<IpNet> = order.split_off(max);
            for prefix in &refused {
                plan.routes.remove(prefix);
            }
            plan.notes.push(format!(
                "maxRoutes {max} exceeded: the plan has {total} routes; {} new route(s) refused, what was announced stays",
                refused.len()
            ));
            plan.max_routes_refused = refused.len();
        }
        self.announced = plan.routes.clone();
        Guarded {
            plan,
            wake_at,
            brake: self.brake.as_ref().and_then(Brake::status),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::plan::{Route, RouteKind};

    fn plan_of(routes: &[(&str, RouteKind, &[&str])]) -> Plan {
        let mut plan = Plan::default();
        for (prefix, kind, nodes) in routes {
            let prefix: IpNet = prefix.parse().unwrap();
            plan.insert_route(Route {
                prefix,
                kind: *kind,
                next_hops: nodes
                    .iter()
                    .map(|n| NextHop {
                        node: n.to_string(),
                        address: format!("10.0.0.{}", &n[1..]).parse().unwrap(),
                    })
                    .collect(),
                sources: BTreeSet::new(),
                reason: String::new(),
                communities: BTreeSet::new(),
                large_communities: BTreeSet::new(),
                part_of: None,
                left_out: Default::default(),
            });
        }
        plan
    }

    fn hops(plan: &Plan, prefix: &str) -> Vec<String> {
        plan.routes
            .get(&prefix.parse::<IpNet>().unwrap())
            .map(|r| r.next_hops.iter().map(|h| h.node.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn flapping_path_is_withdrawn_at_once_and_returns_after_hold_down() {
        let mut guard = Guard::new(GuardConfig {
            hold_down: Duration::from_secs(1),
            max_routes: None,
            brake: None,
        });
        let t0 = Instant::now();
        let up = plan_of(&[("10.96.0.1/32", RouteKind::ClusterIp, &["n1", "n2"])]);
        let down = plan_of(&[("10.96.0.1/32", RouteKind::ClusterIp, &["n2"])]);
        let ms = |m| t0 + Duration::from_millis(m);
        assert_eq!(
            hops(&guard.apply(&up, ms(0)).plan, "10.96.0.1/32"),
            ["n1", "n2"]
        );
        // Down: withdrawn immediately.
        assert_eq!(
            hops(&guard.apply(&down, ms(100)).plan, "10.96.0.1/32"),
            ["n2"]
        );
        // Up again 100 ms later: held, with a wake-up when it is due.
        let g = guard.apply(&up, ms(200));
        assert_eq!(hops(&g.plan, "10.96.0.1/32"), ["n2"]);
        assert_eq!(g.wake_at, Some(ms(1100)));
        assert!(g.plan.notes[0].contains("held down"));
        // Flaps again: the hold restarts from the last withdrawal.
        guard.apply(&down, ms(300));
        assert_eq!(guard.apply(&up, ms(400)).wake_at, Some(ms(1300)));
        assert_eq!(
            hops(&guard.apply(&up, ms(1299)).plan, "10.96.0.1/32"),
            ["n2"]
        );
        // Stable for the hold-down: back.
        let g = guard.apply(&up, ms(1300));
        assert_eq!(hops(&g.plan, "10.96.0.1/32"), ["n1", "n2"]);
        assert_eq!(g.wake_at, None);
    }

    #[test]
    fn a_route_whose_only_path_is_held_is_absent() {
        let mut guard = Guard::new(GuardConfig {
            hold_down: Duration::from_secs(1),
            max_routes: None,
            brake: None,
        });
        let t0 = Instant::now();
        let up = plan_of(&[("10.96.0.1/32", RouteKind::ClusterIp, &["n1"])]);
        guard.apply(&up, t0);
        guard.apply(&Plan::default(), t0 + Duration::from_millis(10));
        assert!(
            guard
                .apply(&up, t0 + Duration::from_millis(20))
                .plan
                .routes
                .is_empty()
        );
    }

    #[test]
    fn max_routes_keeps_what_is_announced_and_prefers_ranges() {
        let mut guard = Guard::new(GuardConfig {
            hold_down: Duration::ZERO,
            max_routes: Some(3),
            brake: None,
        });
        let t = Instant::now();
        let first = plan_of(&[
            ("10.96.0.0/12", RouteKind::ClusterRange, &["n1"]),
            ("10.96.0.9/32", RouteKind::ClusterIp, &["n1"]),
        ]);
        assert_eq!(guard.apply(&first, t).plan.routes.len(), 2);
        let flood = plan_of(&[
            ("10.96.0.0/12", RouteKind::ClusterRange, &["n1"]),
            ("10.96.0.1/32", RouteKind::ClusterIp, &["n1"]),
            ("10.96.0.2/32", RouteKind::ClusterIp, &["n1"]),
            ("10.96.0.9/32", RouteKind::ClusterIp, &["n1"]),
            ("198.51.100.0/24", RouteKind::ExternalRange, &["n1"]),
        ]);
        let g = guard.apply(&flood, t);
        let kept: Vec<String> = g.plan.routes.keys().map(ToString::to_string).collect();
        assert_eq!(kept, ["10.96.0.0/12", "10.96.0.9/32", "198.51.100.0/24"]);
        assert!(
            g.plan
                .notes
                .iter()
                .any(|n| n.contains("maxRoutes 3 exceeded")),
            "{:?}",
            g.plan.notes
        );
        assert_eq!(g.plan.max_routes_refused, 2, "{:?}", g.plan.notes);
        // Back under the limit: no alarm.
        let back = guard.apply(&first, t).plan;
        assert!(back.notes.is_empty());
        assert_eq!(back.max_routes_refused, 0);
    }
}
