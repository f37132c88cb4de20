//! How plans travel between query nodes: [`ClusterCodec`] (de)serializes
//! sluice's own operators (the cluster's scan, dictionary grouping, yield
//! points, recursion caps) inside DataFusion Distributed's plans, and
//! refuses bytes that do not describe one.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::{ChildrenPropertiesMode, ExecutionPlan, ReplaceChildrenOptions};
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf;
use prost::Message;

use crate::optimizer::dictionary_group::DictionaryGroupBy;
use crate::scan::read::Reader;
use crate::scan::read::ScanSpec;
use crate::scan::spread::ClusterScanExec;
use crate::scan::spread::Spec;
use crate::stats::ScanStats;

/// (De)serializes [`ClusterScanExec`] for the tasks sent between nodes.
#[derive(Debug)]
pub struct ClusterCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct ScanProto {
    #[prost(bytes = "vec", tag = "1")]
    spec: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    schema: Option<protobuf::Schema>,
    #[prost(message, optional, tag = "3")]
    read_schema: Option<protobuf::Schema>,
    #[prost(message, optional, tag = "4")]
    residual: Option<protobuf::PhysicalExprNode>,
    /// Set instead of the scan's fields for a [`DictionaryGroupBy`]: its
    /// aggregation over a placeholder, the scan being the node's input. A
    /// node that predates the field ignores it and refuses the input.
    #[prost(message, optional, tag = "5")]
    dictionary_group: Option<protobuf::PhysicalPlanNode>,
    /// Set instead of the scan's fields for a [`crate::limits::bounds::YieldExec`]
    /// over the node's input.
    #[prost(bool, tag = "6")]
    yield_point: bool,
    /// Set instead of the scan's fields for a [`crate::limits::bounds::RecursionCap`]
    /// over the node's input: its most iterations.
    #[prost(uint32, tag = "7")]
    recursion_cap: u32,
}

fn decode_error(what: &str, e: impl fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("decoding a distributed scan's {what}: {e}"))
}

impl PhysicalExtensionCodec for ClusterCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let proto = ScanProto::decode(buf).map_err(|e| decode_error("message", e))?;
        if proto.yield_point || proto.recursion_cap > 0 {
            let [input] = inputs else {
                return Err(decode_error("yield point or recursion cap", "not exactly one input"));
            };
            if proto.yield_point {
                return Ok(Arc::new(crate::limits::bounds::YieldExec::new(Arc::clone(input))));
            }
            return Ok(Arc::new(crate::limits::bounds::RecursionCap::new(Arc::clone(input), proto.recursion_cap)));
        }
        if let Some(aggregate) = &proto.dictionary_group {
            let [scan] = inputs else {
                return Err(decode_error("grouping", "not exactly one input"));
            };
            if !scan.is::<ClusterScanExec>() {
                return Err(decode_error("grouping", "its input is not a distributed scan"));
            }
            let decode = PhysicalPlanDecodeContext::new(ctx, self);
            let aggregate = proto_converter.proto_to_execution_plan(aggregate, &decode)?;
            let aggregate = aggregate.replace_children(
                vec![Arc::clone(scan)],
                ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
            )?;
            let replaced = aggregate
                .downcast_ref::<AggregateExec>()
                .and_then(DictionaryGroupBy::of_shape)
                .filter(DictionaryGroupBy::is_grouped)
                .ok_or_else(|| decode_error("grouping", "not a partial aggregation by one string column"))?;
            return Ok(Arc::new(replaced));
        }
        if !inputs.is_empty() {
            return Err(DataFusionError::Internal("ClusterScanExec has no inputs".into()));
        }
        let spec: Spec = serde_json::from_slice(&proto.spec).map_err(|e| decode_error("spec", e))?;
        let schema = proto.schema.as_ref().ok_or_else(|| decode_error("schema", "absent"))?;
        let schema: SchemaRef = Arc::new(Schema::try_from(schema)?);
        let read_schema = proto.read_schema.as_ref().ok_or_else(|| decode_error("read schema", "absent"))?;
        let read_schema: SchemaRef = Arc::new(Schema::try_from(read_schema)?);
        let residual = match &proto.residual {
            Some(node) => {
                let decode = PhysicalPlanDecodeContext::new(ctx, self);
                Some(proto_converter.proto_to_physical_expr(node, &read_schema, &decode)?)
            }
            None => None,
        };
        if spec.output.iter().any(|&i| i >= read_schema.fields().len()) {
            return Err(decode_error("output columns", "out of range"));
        }
        let reader = Reader { read_schema, residual, output: spec.output };
        let scan = ScanSpec {
            table: spec.table,
            schema,
            reader,
            predicate: spec.predicate,
            exact: spec.exact,
            limit: spec.limit,
        };
        Ok(Arc::new(ClusterScanExec::new(scan, spec.tasks, spec.partitions, None, ScanStats::default())))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(group) = node.downcast_ref::<DictionaryGroupBy>() {
            // The scan travels as the node's input: the aggregation is sent
            // over a placeholder of the scan's schema, not a second copy.
            let aggregate = group.aggregate();
            let placeholder: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(aggregate.input().schema()));
            let aggregate = Arc::new(aggregate.clone())
                .replace_children(vec![placeholder], ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))?;
            let proto = ScanProto {
                dictionary_group: Some(proto_converter.execution_plan_to_proto(&aggregate, self)?),
                ..Default::default()
            };
            return proto
                .encode(buf)
                .map_err(|e| DataFusionError::Internal(format!("encoding a distributed grouping: {e}")));
        }
        let wrapper = if node.is::<crate::limits::bounds::YieldExec>() {
            Some(ScanProto { yield_point: true, ..Default::default() })
        } else {
            node.downcast_ref::<crate::limits::bounds::RecursionCap>()
                .map(|cap| ScanProto { recursion_cap: cap.max(), ..Default::default() })
        };
        if let Some(proto) = wrapper {
            return proto.encode(buf).map_err(|e| DataFusionError::Internal(format!("encoding a yield point: {e}")));
        }
        let Some(scan) = node.downcast_ref::<ClusterScanExec>() else {
            return Err(DataFusionError::Internal(format!("ClusterCodec cannot encode {}", node.name())));
        };
        let spec = Spec {
            table: scan.spec.table.clone(),
            tasks: scan.tasks.clone(),
            predicate: scan.spec.predicate.clone(),
            exact: scan.spec.exact,
            limit: scan.spec.limit,
            partitions: scan.partitions,
            output: scan.spec.reader.output.clone(),
        };
        let residual = match &scan.spec.reader.residual {
            Some(expr) => Some(proto_converter.physical_expr_to_proto(expr, self)?),
            None => None,
        };
        let proto = ScanProto {
            spec: serde_json::to_vec(&spec).map_err(|e| DataFusionError::Internal(e.to_string()))?,
            schema: Some(scan.spec.schema.as_ref().try_into()?),
            read_schema: Some(scan.spec.reader.read_schema.as_ref().try_into()?),
            residual,
            ..Default::default()
        };
        proto.encode(buf).map_err(|e| DataFusionError::Internal(format!("encoding a distributed scan: {e}")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scan::spread::Task;
    use arrow::datatypes::{DataType, Field};
    use datafusion_proto::physical_plan::DefaultPhysicalProtoConverter;

    fn scan(output: Vec<usize>) -> ScanProto {
        let schema = Schema::new(vec![Field::new("status", DataType::Int32, true)]);
        let spec = Spec {
            table: "clicks".into(),
            tasks: vec![Task {
                url: "http://127.0.0.1:1".into(),
                named: vec!["s".into()],
                pinned: None,
                tails: vec![],
            }],
            predicate: None,
            exact: true,
            limit: None,
            partitions: 2,
            output,
        };
        ScanProto {
            spec: serde_json::to_vec(&spec).unwrap(),
            schema: Some((&schema).try_into().unwrap()),
            read_schema: Some((&schema).try_into().unwrap()),
            residual: None,
            ..Default::default()
        }
    }

    /// The Flight port takes plans from the network: bytes that are not a
    /// scan, or a scan pointing outside its own columns, are refused with
    /// an error, never a panic or an out-of-bounds read later.
    #[test]
    fn hostile_scan_bytes_are_refused() {
        let (ctx, converter) = (TaskContext::default(), DefaultPhysicalProtoConverter {});
        let decode = |bytes: &[u8]| ClusterCodec.try_decode(bytes, &[], &ctx, &converter);
        let mut truncated = scan(vec![0]).encode_to_vec();
        truncated.truncate(truncated.len() / 2);
        let mut bad_spec = scan(vec![0]);
        bad_spec.spec = b"{\"table\": 7}".to_vec();
        let mut no_schema = scan(vec![0]);
        no_schema.schema = None;
        for bytes in [
            Vec::new(),
            vec![0xff; 64],
            truncated,
            bad_spec.encode_to_vec(),
            no_schema.encode_to_vec(),
            scan(vec![5]).encode_to_vec(),
        ] {
            assert!(decode(&bytes).is_err(), "{bytes:?}");
        }
        assert!(decode(&scan(vec![0]).encode_to_vec()).is_ok(), "a well-formed scan decodes");

        // A grouping: without its scan, over something else than a scan,
        // or carrying no aggregation, it is refused.
        let well_formed = decode(&scan(vec![0]).encode_to_vec()).unwrap();
        let grouping =
            ScanProto { dictionary_group: Some(protobuf::PhysicalPlanNode::default()), ..Default::default() }
                .encode_to_vec();
        let empty: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(well_formed.schema()));
        for inputs in [vec![], vec![empty], vec![well_formed.clone(), well_formed.clone()], vec![well_formed]] {
            let decoded = ClusterCodec.try_decode(&grouping, &inputs, &ctx, &converter);
            assert!(decoded.is_err(), "{} inputs", inputs.len());
        }
    }

    /// A stage sent to another node keeps its yield points and its
    /// recursion cap; either needs exactly one input.
    #[test]
    fn yield_points_and_recursion_caps_travel() {
        let (ctx, converter) = (TaskContext::default(), DefaultPhysicalProtoConverter {});
        let input: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(Arc::new(Schema::empty())));
        let round_trip = |node: Arc<dyn ExecutionPlan>, inputs: &[Arc<dyn ExecutionPlan>]| {
            let mut buf = Vec::new();
            ClusterCodec.try_encode(node, &mut buf, &converter).unwrap();
            ClusterCodec.try_decode(&buf, inputs, &ctx, &converter)
        };
        let yielding = Arc::new(crate::limits::bounds::YieldExec::new(input.clone()));
        let decoded = round_trip(yielding.clone(), std::slice::from_ref(&input)).unwrap();
        assert!(decoded.is::<crate::limits::bounds::YieldExec>());
        let capped = Arc::new(crate::limits::bounds::RecursionCap::new(input.clone(), 77));
        let decoded = round_trip(capped, std::slice::from_ref(&input)).unwrap();
        assert_eq!(decoded.downcast_ref::<crate::limits::bounds::RecursionCap>().map(|c| c.max()), Some(77));
        for inputs in [vec![], vec![input.clone(), input.clone()]] {
            assert!(round_trip(yielding.clone(), &inputs).is_err(), "{} inputs", inputs.len());
        }
    }
}
