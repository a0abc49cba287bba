//! From a capacity run to a fleet: the largest load that held the SLO, what one instance spent
//! per connection, per delivery and per publish there, and how many instances a target load
//! needs if those costs hold. Pure arithmetic over the report's figures, so it can be checked
//! without a run.

use crate::report::Step;
use serde::{Deserialize, Serialize};

/// What the planner asks for, and what an instance has to give.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub clients: u64,
    pub publishes_per_s: f64,
    /// Rooms the clients are spread over, one room each (as in the run).
    pub rooms: usize,
    /// Cores and memory of one production instance.
    pub cores: f64,
    pub memory_mib: f64,
    /// Share of an instance's CPU and memory to plan to use.
    pub headroom: f64,
}

/// What one instance spent at the largest load that held the SLO.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UnitCosts {
    pub clients: u64,
    pub deliveries_per_s: f64,
    pub publishes_per_s: f64,
    pub server_cpu_pct: Option<f64>,
    pub cpu_us_per_delivery: Option<f64>,
    pub memory_kib_per_connection: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Projection {
    pub held: UnitCosts,
    pub target_clients: u64,
    pub target_publishes_per_s: f64,
    pub target_deliveries_per_s: f64,
    /// What one instance carries within the headroom, by each resource.
    pub deliveries_per_instance: Option<f64>,
    pub connections_per_instance: Option<f64>,
    pub instances: Option<u64>,
    /// The resource that sets the count.
    pub bound_by: String,
    pub assumptions: Vec<String>,
}

/// The step with the largest load that held, and the server's memory before any client.
pub fn unit_costs(steps: &[Step], base_rss_mb: Option<f64>) -> Option<UnitCosts> {
    let held = steps
        .iter()
        .filter(|s| s.held)
        .max_by(|a, b| a.load.total_cmp(&b.load))?;
    let memory = match (held.server_rss_mb, base_rss_mb) {
        (Some(now), Some(base)) if held.clients > 0 && now > base => {
            Some((now - base) * 1024.0 / held.clients as f64)
        }
        _ => None,
    };
    Some(UnitCosts {
        clients: held.clients,
        deliveries_per_s: held.deliveries_per_s,
        publishes_per_s: held.rate,
        server_cpu_pct: held.server_cpu_pct,
        cpu_us_per_delivery: held.server_cpu_us_per_delivery,
        memory_kib_per_connection: memory,
    })
}

/// Instances for `target` at the costs of `held`.
pub fn project(held: UnitCosts, target: Target) -> Projection {
    let target_deliveries =
        target.clients as f64 * target.publishes_per_s / target.rooms.max(1) as f64;
    let deliveries_per_instance = held
        .cpu_us_per_delivery
        .filter(|c| *c > 0.0)
        .map(|c| target.cores * 1e6 * target.headroom / c);
    let connections_per_instance = held
        .memory_kib_per_connection
        .filter(|m| *m > 0.0)
        .map(|m| target.memory_mib * 1024.0 * target.headroom / m);
    let count = |need: f64| need.is_finite().then_some(need.ceil());
    let by_cpu = deliveries_per_instance.and_then(|d| count(target_deliveries / d));
    let by_memory = connections_per_instance.and_then(|c| count(target.clients as f64 / c));
    let (instances, bound_by) = match (by_cpu, by_memory) {
        (Some(c), Some(m)) if c >= m => (Some(c), "CPU (deliveries/s)"),
        (Some(_), Some(m)) => (Some(m), "memory (connections)"),
        (Some(c), None) => (Some(c), "CPU (deliveries/s); memory not measured"),
        (None, Some(m)) => (Some(m), "memory (connections); CPU not measured"),
        (None, None) => (None, "nothing measured: no server CPU or memory figures"),
    };
    let assumptions = vec![
        format!(
            "costs as measured at the largest load that held the SLO: {} clients, {:.0} deliveries/s, {:.0} publishes/s",
            held.clients, held.deliveries_per_s, held.publishes_per_s
        ),
        format!(
            "an instance has {} cores and {} MiB, and is planned to {:.0}% of both",
            target.cores,
            target.memory_mib,
            target.headroom * 100.0
        ),
        "CPU per delivery and memory per connection stay as measured at larger loads and on other cores (fan-out work is per delivery and spreads over the shards)".into(),
        format!(
            "clients spread evenly over instances and over {} rooms, one room each, so a publish reaches clients/rooms of them",
            target.rooms
        ),
        "memory per connection is the gateway's own (its RSS); the kernel's socket buffers (a few KiB per idle connection, more when clients read slowly) and the descriptor limit come on top".into(),
        "no failover spare: add one instance (or more) for a lost instance's clients to reconnect to".into(),
    ];
    Projection {
        held,
        target_clients: target.clients,
        target_publishes_per_s: target.publishes_per_s,
        target_deliveries_per_s: target_deliveries,
        deliveries_per_instance,
        connections_per_instance,
        instances: instances.map(|i| (i as u64).max(1)),
        bound_by: bound_by.into(),
        assumptions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(load: f64, clients: u64, held: bool, cpu: f64, rss: f64) -> Step {
        Step {
            load,
            clients,
            rate: 200.0,
            deliveries_per_s: clients as f64 * 20.0,
            server_cpu_us_per_delivery: Some(cpu),
            server_rss_mb: Some(rss),
            held,
            ..Default::default()
        }
    }

    #[test]
    fn the_largest_step_that_held_sets_the_costs() {
        let steps = [
            step(1000.0, 1000, true, 9.0, 12.0),
            step(2000.0, 2000, true, 8.0, 14.0),
            step(3000.0, 3000, false, 20.0, 16.0),
        ];
        let c = unit_costs(&steps, Some(10.0)).unwrap();
        assert_eq!(c.clients, 2000);
        assert_eq!(c.cpu_us_per_delivery, Some(8.0));
        // (14 - 10) MiB over 2,000 connections.
        assert!((c.memory_kib_per_connection.unwrap() - 2.048).abs() < 1e-9);
        assert!(unit_costs(&steps[2..], Some(10.0)).is_none());
    }

    #[test]
    fn the_scarcer_resource_sets_the_count() {
        let held = UnitCosts {
            cpu_us_per_delivery: Some(8.0),
            memory_kib_per_connection: Some(2.0),
            ..Default::default()
        };
        let target = Target {
            clients: 100_000,
            publishes_per_s: 200.0,
            rooms: 10,
            cores: 8.0,
            memory_mib: 16_384.0,
            headroom: 0.5,
        };
        let p = project(held.clone(), target);
        // 2,000,000 deliveries/s at 8 µs on 8 cores used to half: 500,000 per instance.
        assert_eq!(p.target_deliveries_per_s, 2_000_000.0);
        assert_eq!(p.deliveries_per_instance, Some(500_000.0));
        assert_eq!(p.instances, Some(4));
        assert!(p.bound_by.starts_with("CPU"), "{}", p.bound_by);
        // With almost no publishing, memory decides: 100,000 × 2 KiB in 16 MiB halves.
        let quiet = Target {
            publishes_per_s: 0.01,
            memory_mib: 16.0,
            ..target
        };
        let p = project(held, quiet);
        assert_eq!(p.connections_per_instance, Some(4096.0));
        assert_eq!(p.instances, Some(25));
        assert!(p.bound_by.starts_with("memory"), "{}", p.bound_by);
    }
}
