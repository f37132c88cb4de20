//! A record that does not decode: counted, logged with partition and
//! offset, and dead-lettered or skipped as the pipeline says.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use sluice_config::BadRecordPolicy;

use super::context::PipelineContext;
use super::exit::{Exit, FailReason};
use sluice_decode::BadRecord;

pub(super) async fn handle_bad_record(
    ctx: &PipelineContext,
    partition: i32,
    offset: i64,
    payload: &[u8],
    bad: &BadRecord,
) -> Result<(), Exit> {
    let table = &ctx.config.table;
    match ctx.config.bad_records.policy {
        BadRecordPolicy::Skip => Ok(()),
        BadRecordPolicy::Fail => Err(Exit::failed(
            FailReason::BadRecord,
            format!(
                "bad record at partition {partition} offset {offset}: {bad} (policy `fail`; reset the offset past it to go on)"
            ),
        )),
        BadRecordPolicy::DeadLetter => {
            let (Some(producer), Some(topic)) = (&ctx.dead_letters, &ctx.config.bad_records.topic) else {
                return Err(Exit::failed(FailReason::BadRecord, "dead_letter policy without a producer"));
            };
            let headers = OwnedHeaders::new()
                .insert(Header { key: "sluice.reason", value: Some(bad.kind.as_str()) })
                .insert(Header { key: "sluice.detail", value: Some(&bad.detail) })
                .insert(Header {
                    key: "sluice.source",
                    value: Some(&format!("{}/{partition}/{offset}", ctx.config.source.topic)),
                });
            // The offset moves past the record only once the dead letter is
            // durably written: a crash before that re-reads the record.
            loop {
                let record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload).headers(headers.clone());
                match producer.send(record, Duration::from_secs(30)).await {
                    Ok(_) => return Ok(()),
                    Err((e, _)) => {
                        tracing::warn!(%table, partition, offset, error = %e, "dead-letter write failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    }
}
