//! The delivery log's figures for Prometheus: its depth and size, the
//! damage met, and how far the OTLP exporter lags behind it.

use super::Spool;
use crate::metrics::{single, Kind, Scrape};

impl Spool {
    /// Writes the log's families into `out`, with, when an OTLP exporter
    /// runs, how far the last sequence it saw acknowledged (`otlp_acknowledged`)
    /// lags behind the log.
    pub fn expose(&self, out: &mut Scrape<'_>, otlp_acknowledged: Option<u64>) -> std::fmt::Result {
        let (last, oldest, stats) = (self.last_sequence(), self.oldest_sequence(), self.stats());
        let held = oldest.map_or(0, |oldest| last.saturating_sub(oldest) + 1);
        let families = [
            ("tokenwatch_spool_last_sequence", Kind::Gauge, "Sequence of the newest alert in the delivery log.", last),
            ("tokenwatch_spool_alerts", Kind::Gauge, "Alerts held in the delivery log (its depth).", held),
            ("tokenwatch_spool_bytes", Kind::Gauge, "Bytes the delivery log holds on disk.", stats.disk_bytes),
            ("tokenwatch_spool_segments", Kind::Gauge, "Segment files of the delivery log.", stats.segments as u64),
            (
                "tokenwatch_spool_corrupt_reads_total",
                Kind::Counter,
                "Unreadable records met by readers.",
                stats.corrupt_reads,
            ),
            (
                "tokenwatch_spool_deleted_segments_total",
                Kind::Counter,
                "Segments deleted by the size bound.",
                stats.deleted_segments,
            ),
        ];
        for (name, kind, help, value) in families {
            single(out, name, kind, help, value)?;
        }
        if let Some(acked) = otlp_acknowledged {
            single(
                out,
                "tokenwatch_otlp_export_lag",
                Kind::Gauge,
                "Alerts written but not yet acknowledged by the collector.",
                last.saturating_sub(acked),
            )?;
        }
        Ok(())
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
        let metrics = crate::metrics::Metrics::default();
        let (with_lag, without) = (log.clone(), log.clone());
        metrics.register_source(move |out| with_lag.expose(out, Some(1)));
        let text = crate::metrics::render(&metrics).expect("renders");
        assert!(text.contains("tokenwatch_spool_alerts 3\n"), "{text}");
        assert!(text.contains("tokenwatch_spool_last_sequence 3\n"), "{text}");
        assert!(text.contains("tokenwatch_otlp_export_lag 2\n"), "{text}");
        let metrics = crate::metrics::Metrics::default();
        metrics.register_source(move |out| without.expose(out, None));
        let text = crate::metrics::render(&metrics).expect("renders");
        assert!(!text.contains("tokenwatch_otlp_export_lag"), "no exporter, no lag");
    }
}
