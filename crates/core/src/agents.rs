//! The 6×8 agent structure: 8 departments × 6 roles = 48 agents, laid out on a sunflower
//! (Vogel's spiral with the golden angle) with honeycomb neighbours inside each department.
//!
//! The layout is pure arithmetic: every tenant gets the same fleet, and analytics use the
//! neighbour relation to tell "neighbour" traffic from cross-department traffic.

use serde::Serialize;

/// Departments in sunflower order (index 1..=8): slug and display name.
pub const DEPARTMENTS: [(&str, &str); 8] = [
    ("engineering", "Engineering & Technology"),
    ("product", "Product & Innovation"),
    ("sales", "Sales & Business Development"),
    ("marketing", "Marketing & Brand"),
    ("finance", "Finance & Accounting"),
    ("hr", "Human Resources"),
    ("legal", "Legal & Compliance"),
    ("customer", "Customer Success"),
];

/// Roles in every department (index 1..=6): id and title.
pub const ROLES: [(&str, &str); 6] = [
    ("advisor_a", "Senior Advisor"),
    ("advisor_b", "Strategy Advisor"),
    ("scout_internal", "Internal Scout"),
    ("scout_external", "External Scout"),
    ("synth", "Knowledge Synthesizer"),
    ("executor", "Action Executor"),
];

pub const EXPECTED_DEPARTMENTS: usize = DEPARTMENTS.len();
pub const EXPECTED_ROLES_PER_DEPARTMENT: usize = ROLES.len();
pub const EXPECTED_AGENTS: usize = EXPECTED_DEPARTMENTS * EXPECTED_ROLES_PER_DEPARTMENT;

/// Maximum honeycomb neighbours of a cell.
/// Where agents, pairs and kinds past the analytics bounds are counted: not a valid agent id,
/// so no agent can be it.
pub const OTHER: &str = "(other)";
pub const MAX_NEIGHBOURS: usize = 6;

/// The golden angle in radians, π(3 − √5) ≈ 137.508°.
pub fn golden_angle() -> f64 {
    std::f64::consts::PI * (3.0 - 5f64.sqrt())
}

/// Position of sunflower index `k` (1-based) among `n` cells at `scale`.
/// r = √k / √n · scale, θ = k · golden angle.
pub fn sunflower_point(k: usize, n: usize, scale: f64) -> (f64, f64) {
    let r = (k as f64).sqrt() / (n as f64).sqrt() * scale;
    let theta = k as f64 * golden_angle();
    (r * theta.cos(), r * theta.sin())
}

const DEPARTMENT_SCALE: f64 = 100.0;
const AGENT_SCALE: f64 = 20.0;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentSpec {
    /// `<department>_<role>`, e.g. `legal_synth`.
    pub id: String,
    /// `<role title> <department name before '&'>`, e.g. "Knowledge Synthesizer Legal".
    pub name: String,
    pub department: &'static str,
    pub role: &'static str,
    /// `advisor` for the two advisor roles, `specialist` otherwise.
    pub kind: &'static str,
    /// `A<department index><role index>`, A11 .. A86.
    pub cell_id: String,
    /// department index × 10 + role index, 11 .. 86.
    pub sunflower_index: usize,
    /// Absolute sunflower coordinates.
    pub x: f64,
    pub y: f64,
    /// Up to six nearest agents of the same department, nearest first.
    pub neighbours: Vec<String>,
}

/// The whole 48-agent fleet in department then role order.
pub fn fleet() -> Vec<AgentSpec> {
    let mut agents = Vec::with_capacity(EXPECTED_AGENTS);
    for (d, (dept, dept_name)) in DEPARTMENTS.iter().enumerate() {
        let (dx, dy) = sunflower_point(d + 1, DEPARTMENTS.len(), DEPARTMENT_SCALE);
        let short = dept_name.split('&').next().unwrap_or(dept_name).trim();
        for (r, (role, title)) in ROLES.iter().enumerate() {
            let (ax, ay) = sunflower_point(r + 1, ROLES.len(), AGENT_SCALE);
            agents.push(AgentSpec {
                id: format!("{dept}_{role}"),
                name: format!("{title} {short}"),
                department: dept,
                role,
                kind: if role.starts_with("advisor") { "advisor" } else { "specialist" },
                cell_id: format!("A{}{}", d + 1, r + 1),
                sunflower_index: (d + 1) * 10 + r + 1,
                x: dx + ax,
                y: dy + ay,
                neighbours: Vec::new(),
            });
        }
    }
    let positions: Vec<(String, &'static str, f64, f64)> =
        agents.iter().map(|a| (a.id.clone(), a.department, a.x, a.y)).collect();
    for agent in &mut agents {
        let mut near: Vec<(f64, &str)> = positions
            .iter()
            .filter(|(id, dept, _, _)| *dept == agent.department && *id != agent.id)
            .map(|(id, _, x, y)| (((x - agent.x).powi(2) + (y - agent.y).powi(2)).sqrt(), id.as_str()))
            .collect();
        near.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
        agent.neighbours = near.into_iter().take(MAX_NEIGHBOURS).map(|(_, id)| id.to_owned()).collect();
    }
    agents
}

/// The department of a fleet agent id (`legal_synth` → `legal`), if it is one.
pub fn department_of(agent_id: &str) -> Option<&'static str> {
    DEPARTMENTS.iter().map(|(d, _)| *d).find(|d| {
        agent_id
            .strip_prefix(d)
            .and_then(|rest| rest.strip_prefix('_'))
            .is_some_and(|role| ROLES.iter().any(|(r, _)| *r == role))
    })
}

/// Whether two fleet agents are honeycomb neighbours (same department, within the six nearest).
pub fn are_neighbours(fleet: &[AgentSpec], a: &str, b: &str) -> bool {
    fleet.iter().find(|s| s.id == a).is_some_and(|s| s.neighbours.iter().any(|n| n == b))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StructureValidation {
    pub departments_valid: bool,
    pub agents_valid: bool,
    pub roles_valid: bool,
    pub structure_valid: bool,
}

/// Checks counts against the 8/48/6 structure.
pub fn validate(departments: usize, agents: usize, min_roles: usize, max_roles: usize) -> StructureValidation {
    let departments_valid = departments == EXPECTED_DEPARTMENTS;
    let agents_valid = agents == EXPECTED_AGENTS;
    let roles_valid = min_roles == EXPECTED_ROLES_PER_DEPARTMENT && max_roles == EXPECTED_ROLES_PER_DEPARTMENT;
    StructureValidation {
        departments_valid,
        agents_valid,
        roles_valid,
        structure_valid: departments_valid && agents_valid && roles_valid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn fleet_is_six_by_eight() {
        let fleet = fleet();
        assert_eq!(fleet.len(), 48);
        let ids: BTreeSet<_> = fleet.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids.len(), 48, "ids are unique");
        let mut per_dept: BTreeMap<&str, usize> = BTreeMap::new();
        for a in &fleet {
            *per_dept.entry(a.department).or_default() += 1;
        }
        assert_eq!(per_dept.len(), 8);
        assert!(per_dept.values().all(|n| *n == 6));
        assert_eq!(fleet[0].cell_id, "A11");
        assert_eq!(fleet[47].cell_id, "A86");
        assert_eq!(fleet[47].sunflower_index, 86);
        let synth = fleet.iter().find(|a| a.id == "legal_synth").expect("legal_synth exists");
        assert_eq!(synth.name, "Knowledge Synthesizer Legal");
        assert_eq!(synth.kind, "specialist");
        assert_eq!(fleet[0].kind, "advisor");
    }

    #[test]
    fn golden_angle_is_137_5_degrees() {
        assert!((golden_angle().to_degrees() - 137.507_764).abs() < 1e-5);
        let (x, y) = sunflower_point(1, 8, 100.0);
        let r = (x * x + y * y).sqrt();
        assert!((r - 100.0 / 8f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn neighbours_stay_in_department_and_are_symmetric_sets() {
        let fleet = fleet();
        for a in &fleet {
            assert!(!a.neighbours.is_empty() && a.neighbours.len() <= MAX_NEIGHBOURS);
            for n in &a.neighbours {
                assert_eq!(department_of(n), Some(a.department));
                assert_ne!(n, &a.id);
                // With six agents per department every other agent is a neighbour, both ways.
                assert!(are_neighbours(&fleet, n, &a.id));
            }
        }
        assert!(!are_neighbours(&fleet, "legal_synth", "sales_synth"));
    }

    #[test]
    fn department_lookup() {
        assert_eq!(department_of("customer_scout_external"), Some("customer"));
        assert_eq!(department_of("hr_executor"), Some("hr"));
        assert_eq!(department_of("hr_janitor"), None);
        assert_eq!(department_of("council_legal"), None);
    }

    #[test]
    fn validation() {
        assert!(validate(8, 48, 6, 6).structure_valid);
        let v = validate(12, 72, 6, 6);
        assert!(!v.departments_valid && !v.agents_valid && v.roles_valid && !v.structure_valid);
    }
}
