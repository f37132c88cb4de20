//! How many bytes Arrow values take: the measure every bound of the query
//! crate uses (function outputs, results, repeated values).

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;

/// Whether values of a type vary in size (strings, binary, lists,
/// structs): only those can grow past what their input held.
pub(crate) fn variable_width(data_type: &DataType) -> bool {
    !data_type.is_primitive() && !matches!(data_type, DataType::Boolean | DataType::Null)
}

/// The bytes of an array's values (a function's output, a result's
/// column): the sliced length of its buffers, not the buffers it shares
/// with others. Arrow's slice size counts only the 16-byte views of a
/// string-view column, not the strings (they live in variadic buffers):
/// those are counted from the values, so large strings measure as large.
pub(crate) fn array_bytes(array: &dyn Array) -> u128 {
    match array.data_type() {
        DataType::Utf8View => (array.len() * 16 + array.as_string_view().total_bytes_len()) as u128,
        DataType::BinaryView => (array.len() * 16 + array.as_binary_view().total_bytes_len()) as u128,
        _ => array.to_data().get_slice_memory_size().unwrap_or(array.get_array_memory_size()) as u128,
    }
}

/// An upper bound of the bytes of the array's largest value: what one
/// copy of any of its values costs. Exact for strings and binary; a list
/// counts its longest row times its elements' widest, a struct the sum of
/// its fields' widest; fixed-width values their width.
pub(crate) fn widest_value(array: &dyn Array) -> u128 {
    fn longest<O: arrow::array::OffsetSizeTrait>(offsets: &[O]) -> u128 {
        offsets.windows(2).map(|w| (w[1] - w[0]).as_usize() as u128).max().unwrap_or(0)
    }
    if array.is_empty() {
        return 0;
    }
    match array.data_type() {
        DataType::Utf8 => longest(array.as_string::<i32>().value_offsets()),
        DataType::LargeUtf8 => longest(array.as_string::<i64>().value_offsets()),
        DataType::Binary => longest(array.as_binary::<i32>().value_offsets()),
        DataType::LargeBinary => longest(array.as_binary::<i64>().value_offsets()),
        // A view's first four bytes are its value's length.
        DataType::Utf8View => array.as_string_view().views().iter().map(|v| *v as u32 as u128).max().unwrap_or(0),
        DataType::BinaryView => array.as_binary_view().views().iter().map(|v| *v as u32 as u128).max().unwrap_or(0),
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            longest(list.value_offsets()) * widest_value(list.values().as_ref()).max(1)
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>();
            longest(list.value_offsets()) * widest_value(list.values().as_ref()).max(1)
        }
        DataType::Struct(_) => array.as_struct().columns().iter().map(|c| widest_value(c.as_ref())).sum(),
        // Fixed-width values (and the rare nested kinds, by their average).
        _ => array_bytes(array).div_ceil(array.len() as u128),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ListArray, StringArray, StringViewArray};
    use arrow::datatypes::Int32Type;

    #[test]
    fn the_widest_value_is_the_largest_one() {
        let big = "x".repeat(1000);
        let strings = StringArray::from(vec![Some("a"), None, Some(big.as_str()), Some("bc")]);
        assert_eq!(widest_value(&strings), 1000);
        // Sliced: the large value is not in the slice.
        assert_eq!(widest_value(&strings.slice(0, 2)), 1);
        let views = StringViewArray::from(vec![Some("short"), Some(big.as_str())]);
        assert_eq!(widest_value(&views), 1000);
        let lists = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), Some(2), Some(3)]),
            Some(vec![Some(4)]),
        ]);
        assert_eq!(widest_value(&lists), 12);
        assert!(!variable_width(&DataType::Int64));
        assert!(variable_width(&DataType::Utf8View));
    }
}
