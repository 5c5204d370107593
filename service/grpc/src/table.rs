//! The plan as an aligned text table, for people.

use crate::plan::Plan;

/// Left-aligns columns; the last column is not padded.
pub fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let last = row.len().saturating_sub(1);
        for (c, cell) in row.iter().enumerate() {
            if c == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        out.push('\n');
    }
    out
}

pub fn plan(plan: &Plan) -> String {
    let mut rows = vec![vec![
        "PREFIX".into(),
        "KIND".into(),
        "NEXT HOPS".into(),
        "SOURCES".into(),
    ]];
    for route in plan.routes.values() {
        let hops: Vec<String> = route
            .next_hops
            .iter()
            .map(|n| format!("{} ({})", n.address, n.node))
            .collect();
        let sources: Vec<&str> = route.sources.iter().map(String::as_str).collect();
        let kind = match route.part_of {
            Some(range) => format!("{} of {range}", route.kind),
            None => route.kind.to_string(),
        };
        rows.push(vec![
            route.prefix.to_string(),
            kind,
            hops.join(", "),
            sources.join(", "),
        ]);
    }
    let mut out = align(&rows);
    if !plan.refusals.is_empty() {
        out.push_str("\nREFUSED\n");
        let mut rows = vec![vec!["SERVICE".into(), "IP".into(), "REASON".into()]];
        rows.extend(
            plan.refusals
                .iter()
                .map(|r| vec![r.service.to_string(), r.ip.clone(), r.reason.clone()]),
        );
        out.push_str(&align(&rows));
    }
    for note in &plan.notes {
        out.push_str(&format!("\nnote: {note}"));
    }
    if !plan.notes.is_empty() {
        out.push('\n');
    }
    out
}
