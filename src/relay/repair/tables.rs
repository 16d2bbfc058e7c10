//! What `outbox verify` and `outbox repair` print: a table per stream.

use super::{Finding, StreamCheck, StreamRepair};
use crate::table::{Column, Table};

/// `outbox verify`'s table: per stream, rows acknowledged in the window, missing, stored twice,
/// and why.
pub fn format_checks(checks: &[StreamCheck]) -> String {
    let mut table = Table::new(
        "  ",
        [
            Column::left("STREAM"),
            Column::right("ACKNOWLEDGED"),
            Column::right("MISSING"),
            Column::right("COPIES"),
            Column::left("FINDING"),
        ],
    );
    for check in checks {
        table.row(vec![
            check.stream.clone(),
            check.acknowledged.to_string(),
            check.missing.len().to_string(),
            check.copies.len().to_string(),
            check.findings_text(),
        ]);
    }
    table.render()
}

/// `outbox repair`'s table: per repaired stream, what was put back.
pub fn format_repairs(repairs: &[StreamRepair]) -> String {
    let mut table = Table::new(
        "  ",
        [
            Column::left("STREAM"),
            Column::right("MISSING"),
            Column::right("REPUBLISHED"),
            Column::right("DUPLICATES"),
            Column::right("FAILED"),
            Column::right("COPIES DELETED"),
            Column::right("RECORDED"),
            Column::left("FINDING"),
        ],
    );
    for repair in repairs {
        let mut finding = findings_text(&repair.findings);
        if let Some(error) = &repair.error {
            finding = format!("{finding}; failed: {error}");
        }
        table.row(vec![
            repair.stream.clone(),
            repair.missing.to_string(),
            repair.republished.to_string(),
            repair.duplicates.to_string(),
            repair.failed.to_string(),
            repair.copies_deleted.to_string(),
            repair.recorded.to_string(),
            finding,
        ]);
    }
    table.render()
}

fn findings_text(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "-".to_owned();
    }
    findings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::acknowledged::Acknowledged;

    fn row(id: i64) -> Acknowledged {
        Acknowledged {
            id,
            event_id: id.to_string(),
            sequence: id as u64,
            published_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn the_tables_name_each_stream_and_what_it_misses() {
        let mut created = StreamCheck::new("ORDER_CREATED".into());
        created.acknowledged = 12;
        created.missing = vec![row(1), row(2), row(3)];
        created.findings = vec![
            Finding::Truncated {
                last_sequence: 9,
                recorded: 12,
            },
            Finding::Holes { rows: 2 },
        ];
        let mut audit = StreamCheck::new("ORDER_AUDIT".into());
        audit.acknowledged = 4;
        assert_eq!(
            format_checks(&[created, audit]),
            "STREAM         ACKNOWLEDGED  MISSING  COPIES  FINDING\n\
             ORDER_CREATED            12        3       0  last sequence 9, below the recorded 12; 2 in deleted sequences\n\
             ORDER_AUDIT               4        0       0  -\n"
        );
    }
}
