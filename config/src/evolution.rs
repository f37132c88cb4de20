//! Which changes a live pipeline's schema may take: columns may be added
//! (nullable, or with a default that segments written before answer) and
//! nullable columns removed. A column may not change type or time unit, a
//! non-null column may not be removed, and the time column may not be
//! renamed: segments already committed hold the old layout, and query nodes
//! serve old and new segments of one table together.

use crate::Problems;
use crate::pipeline::PipelineConfig;

/// Every reason `next` cannot replace `current` on a live table (none when
/// it can), each naming the column.
pub fn schema_change_problems(current: &PipelineConfig, next: &PipelineConfig) -> Problems {
    let mut p = Problems::default();
    let (old, new) = (&current.schema, &next.schema);
    if old.time_column != new.time_column {
        p.push(
            "schema.time_column",
            format!("`{}` (the live table's is `{}`)", new.time_column, old.time_column),
            "the same time column: it places committed segments in time and cannot be renamed",
        );
    }
    for before in &old.columns {
        let field = format!("schema.columns.{}", before.name);
        match new.column(&before.name) {
            Some(after) if after.data_type != before.data_type => p.push(
                format!("{field}.type"),
                format!("{} (the live table's is {})", after.data_type, before.data_type),
                "the same type: committed segments store the old one",
            ),
            Some(after)
                if after.time_unit() != before.time_unit()
                    && after.data_type == crate::schema::ColumnType::Timestamp =>
            {
                p.push(
                    format!("{field}.unit"),
                    format!("{:?} (the live table's is {:?})", after.time_unit(), before.time_unit()),
                    "the same unit: committed segments store the old one",
                )
            }
            Some(_) => {}
            None if !before.nullable => p.push(
                field,
                "removed, but it is not nullable",
                "a non-null column kept (removing it would leave queries of it NULL in new segments)",
            ),
            None => {}
        }
    }
    for added in new.columns.iter().filter(|c| old.column(&c.name).is_none()) {
        if !added.nullable && added.default.is_none() {
            p.push(
                format!("schema.columns.{}", added.name),
                "added as not nullable without a default",
                "a default (or nullable = true): segments committed before answer it for their rows",
            );
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(columns: &str, time_column: &str) -> PipelineConfig {
        let text = format!(
            "table = \"t\"\n[source]\nbootstrap_servers = \"k:9092\"\ntopic = \"t\"\n[schema]\n\
             time_column = \"{time_column}\"\ncolumns = [\n{columns}\n]\n"
        );
        crate::parse_pipeline(&text, std::path::Path::new("t.toml"), &|_: &str| None).unwrap()
    }

    const BASE: &str = r#"{ name = "ts", type = "timestamp", nullable = false },
        { name = "user", type = "string", nullable = false },
        { name = "note", type = "string" },"#;

    fn problems(next: &PipelineConfig) -> String {
        let base = pipeline(BASE, "ts");
        schema_change_problems(&base, next).into_vec().iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn adding_columns_and_removing_nullable_ones_is_compatible() {
        let next = pipeline(
            r#"{ name = "ts", type = "timestamp", nullable = false },
               { name = "user", type = "string", nullable = false },
               { name = "plan", type = "string", nullable = false, default = "free" },
               { name = "score", type = "float64" },"#,
            "ts",
        );
        assert_eq!(problems(&next), "");
    }

    #[test]
    fn incompatible_changes_name_their_column() {
        let next = pipeline(
            r#"{ name = "at", type = "timestamp", nullable = false },
               { name = "ts", type = "int64", nullable = false },
               { name = "note", type = "string" },
               { name = "plan", type = "string", nullable = false },"#,
            "at",
        );
        let found = problems(&next);
        for expected in ["schema.time_column", "schema.columns.ts.type", "schema.columns.user", "schema.columns.plan"] {
            assert!(found.contains(expected), "{expected} in:\n{found}");
        }
    }
}
