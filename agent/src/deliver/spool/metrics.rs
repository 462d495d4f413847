//! The delivery log's figures for Prometheus: its depth and size, the
//! damage met, and how far the OTLP exporter lags behind it.

use super::Spool;
use crate::metrics::Exposition;

impl Spool {
    /// Writes the log's families into `out`: with the appends it refused
    /// (`write_failures`, counted by the sinks) and, when an OTLP exporter
    /// runs, the last sequence it saw acknowledged.
    pub fn expose(&self, out: &mut Exposition, write_failures: u64, otlp_acknowledged: Option<u64>) {
        let (last, oldest, stats) = (self.last_sequence(), self.oldest_sequence(), self.stats());
        let held = oldest.map_or(0, |oldest| last.saturating_sub(oldest) + 1);
        let gauges = [
            ("tokenwatch_spool_last_sequence", "Sequence of the newest alert in the delivery log.", last),
            ("tokenwatch_spool_alerts", "Alerts held in the delivery log (its depth).", held),
            ("tokenwatch_spool_bytes", "Bytes the delivery log holds on disk.", stats.disk_bytes),
            ("tokenwatch_spool_segments", "Segment files of the delivery log.", stats.segments as u64),
        ];
        for (name, help, value) in gauges {
            out.family(name, "gauge", help);
            out.sample(name, &[], value);
        }
        let counters = [
            ("tokenwatch_spool_corrupt_reads_total", "Unreadable records met by readers.", stats.corrupt_reads),
            ("tokenwatch_spool_deleted_segments_total", "Segments deleted by the size bound.", stats.deleted_segments),
            (
                "tokenwatch_spool_write_failures_total",
                "Alerts the delivery log refused (disk full?): on stdout only.",
                write_failures,
            ),
        ];
        for (name, help, value) in counters {
            out.family(name, "counter", help);
            out.sample(name, &[], value);
        }
        if let Some(acked) = otlp_acknowledged {
            out.family(
                "tokenwatch_otlp_export_lag",
                "gauge",
                "Alerts written but not yet acknowledged by the collector.",
            );
            out.sample("tokenwatch_otlp_export_lag", &[], last.saturating_sub(acked));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_and_export_lag_are_read_from_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Spool::open(dir.path(), 1 << 20, 1 << 16, "boot").expect("a spool");
        let mut alert = tokenwatch_proto::v1::Alert { rule: "token-read".to_owned(), ..Default::default() };
        for _ in 0..3 {
            log.append(&mut alert).expect("append");
        }
        let mut out = Exposition::new();
        log.expose(&mut out, 0, Some(1));
        let text = out.into_string();
        assert!(text.contains("tokenwatch_spool_alerts 3\n"), "{text}");
        assert!(text.contains("tokenwatch_spool_last_sequence 3\n"), "{text}");
        assert!(text.contains("tokenwatch_otlp_export_lag 2\n"), "{text}");
        let mut out = Exposition::new();
        log.expose(&mut out, 0, None);
        assert!(!out.as_str().contains("tokenwatch_otlp_export_lag"), "no exporter, no lag");
    }
}
