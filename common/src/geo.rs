//! Geo predicates over points stored as latitude/longitude columns.
//!
//! ```sql
//! geo_distance(lat, lon, 59.91, 10.75)                   -- meters (haversine)
//! geo_within_box(lat, lon, south, west, north, east)     -- west > east crosses ±180°
//! geo_within_radius(lat, lon, 59.91, 10.75, 5000)        -- within 5 km
//! ```
//!
//! A point is any pair of numeric fields (`{"pos": {"lat": .., "lon": ..}}` gives
//! `"pos.lat"`, `"pos.lon"`); a GeoJSON point (`{"type": "Point", "coordinates":
//! [lon, lat]}`) also gets `.lat` and `.lon` columns when flattened. Leaves answer
//! the box, and the box around a radius, from the range index of the two columns;
//! the functions then check each candidate exactly.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{plan_err, ScalarValue};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

pub const GEO_DISTANCE: &str = "geo_distance";
pub const GEO_WITHIN_BOX: &str = "geo_within_box";
pub const GEO_WITHIN_RADIUS: &str = "geo_within_radius";

/// Mean Earth radius (IUGG), meters.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in meters between two points given in degrees.
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let d_phi = (lat2 - lat1).to_radians();
    let d_lambda = (lon2 - lon1).to_radians();
    let a = (d_phi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (d_lambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// A latitude/longitude box; `west > east` when it crosses the antimeridian.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoBox {
    pub south: f64,
    pub north: f64,
    /// `None`: every longitude (the box reaches a pole).
    pub west_east: Option<(f64, f64)>,
}

impl GeoBox {
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        if lat < self.south || lat > self.north {
            return false;
        }
        match self.west_east {
            None => true,
            Some((west, east)) if west <= east => lon >= west && lon <= east,
            Some((west, east)) => lon >= west || lon <= east,
        }
    }

    /// The smallest box holding every point within `meters` of the center.
    pub fn around(lat: f64, lon: f64, meters: f64) -> GeoBox {
        let angle = (meters / EARTH_RADIUS_M).to_degrees();
        let (south, north) = (lat - angle, lat + angle);
        if south <= -90.0 || north >= 90.0 {
            return GeoBox {
                south: south.max(-90.0),
                north: north.min(90.0),
                west_east: None,
            };
        }
        // The widest longitude span of the circle is at the latitude where its
        // edge is tangent to a meridian.
        let spread = ((meters / EARTH_RADIUS_M).sin() / lat.to_radians().cos())
            .min(1.0)
            .asin()
            .to_degrees();
        if spread >= 180.0 {
            return GeoBox {
                south,
                north,
                west_east: None,
            };
        }
        let wrap = |l: f64| {
            if l < -180.0 {
                l + 360.0
            } else if l > 180.0 {
                l - 360.0
            } else {
                l
            }
        };
        GeoBox {
            south,
            north,
            west_east: Some((wrap(lon - spread), wrap(lon + spread))),
        }
    }
}

fn check_lat(what: &str, value: f64) -> DfResult<()> {
    if !(-90.0..=90.0).contains(&value) {
        return plan_err!("{what}: latitude {value} is outside -90..90 (degrees)");
    }
    Ok(())
}

fn check_lon(what: &str, value: f64) -> DfResult<()> {
    if !(-180.0..=180.0).contains(&value) {
        return plan_err!("{what}: longitude {value} is outside -180..180 (degrees)");
    }
    Ok(())
}

/// The value of a literal argument, if it is one.
fn literal(args: &ReturnFieldArgs<'_>, i: usize) -> Option<f64> {
    match args.scalar_arguments.get(i).copied().flatten()? {
        ScalarValue::Float64(Some(v)) => Some(*v),
        ScalarValue::Int64(Some(v)) => Some(*v as f64),
        other => other
            .cast_to(&DataType::Float64)
            .ok()
            .and_then(|v| match v {
                ScalarValue::Float64(v) => v,
                _ => None,
            }),
    }
}

/// Arguments as f64 arrays of the batch's length.
fn float_args(args: &ScalarFunctionArgs) -> DfResult<Vec<ArrayRef>> {
    args.args
        .iter()
        .map(|a| {
            let array = a.to_array(args.number_rows)?;
            Ok(match array.data_type() {
                DataType::Float64 => array,
                _ => arrow::compute::cast(&array, &DataType::Float64)?,
            })
        })
        .collect()
}

/// Applies `f` row by row; NULL where any argument is NULL.
fn map_rows<T>(
    args: &ScalarFunctionArgs,
    f: impl Fn(&[f64]) -> T,
) -> DfResult<impl Iterator<Item = Option<T>>> {
    let arrays = float_args(args)?;
    let columns: Vec<Float64Array> = arrays
        .iter()
        .map(|a| a.as_primitive::<Float64Type>().clone())
        .collect();
    let mut values = vec![0.0; columns.len()];
    let rows: Vec<Option<T>> = (0..args.number_rows)
        .map(|row| {
            for (value, column) in values.iter_mut().zip(&columns) {
                if column.is_null(row) {
                    return None;
                }
                *value = column.value(row);
            }
            Some(f(&values))
        })
        .collect();
    Ok(rows.into_iter())
}

macro_rules! geo_function {
    ($type:ident, $arity:expr) => {
        #[derive(Debug, PartialEq, Eq, Hash)]
        pub struct $type {
            signature: Signature,
        }

        impl Default for $type {
            fn default() -> Self {
                Self {
                    signature: Signature::uniform(
                        $arity,
                        vec![DataType::Float64],
                        Volatility::Immutable,
                    ),
                }
            }
        }

        impl $type {
            pub fn udf() -> Arc<ScalarUDF> {
                Arc::new(ScalarUDF::from(Self::default()))
            }
        }
    };
}

geo_function!(GeoDistance, 4);
geo_function!(GeoWithinBox, 6);
geo_function!(GeoWithinRadius, 5);

impl ScalarUDFImpl for GeoDistance {
    fn name(&self) -> &str {
        GEO_DISTANCE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> DfResult<FieldRef> {
        for (i, check) in [
            (0, check_lat as fn(&str, f64) -> DfResult<()>),
            (1, check_lon),
            (2, check_lat),
            (3, check_lon),
        ] {
            if let Some(value) = literal(&args, i) {
                check("geo_distance(lat1, lon1, lat2, lon2)", value)?;
            }
        }
        Ok(Arc::new(Field::new(GEO_DISTANCE, DataType::Float64, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = map_rows(&args, |v| haversine_m(v[0], v[1], v[2], v[3]))?;
        Ok(ColumnarValue::Array(Arc::new(
            rows.collect::<Float64Array>(),
        )))
    }
}

impl ScalarUDFImpl for GeoWithinBox {
    fn name(&self) -> &str {
        GEO_WITHIN_BOX
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> DfResult<FieldRef> {
        const WHAT: &str = "geo_within_box(lat, lon, south, west, north, east)";
        for (i, check) in [
            (2, check_lat as fn(&str, f64) -> DfResult<()>),
            (3, check_lon),
            (4, check_lat),
            (5, check_lon),
        ] {
            if let Some(value) = literal(&args, i) {
                check(WHAT, value)?;
            }
        }
        if let (Some(south), Some(north)) = (literal(&args, 2), literal(&args, 4)) {
            if south > north {
                return plan_err!("{WHAT}: south {south} is north of north {north}; swap them");
            }
        }
        Ok(Arc::new(Field::new(
            GEO_WITHIN_BOX,
            DataType::Boolean,
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = map_rows(&args, |v| {
            GeoBox {
                south: v[2],
                north: v[4],
                west_east: Some((v[3], v[5])),
            }
            .contains(v[0], v[1])
        })?;
        Ok(ColumnarValue::Array(Arc::new(
            rows.collect::<BooleanArray>(),
        )))
    }
}

impl ScalarUDFImpl for GeoWithinRadius {
    fn name(&self) -> &str {
        GEO_WITHIN_RADIUS
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> DfResult<FieldRef> {
        const WHAT: &str = "geo_within_radius(lat, lon, center_lat, center_lon, meters)";
        if let Some(value) = literal(&args, 2) {
            check_lat(WHAT, value)?;
        }
        if let Some(value) = literal(&args, 3) {
            check_lon(WHAT, value)?;
        }
        if let Some(meters) = literal(&args, 4) {
            if meters.is_nan() || meters < 0.0 {
                return plan_err!("{WHAT}: the radius must be meters >= 0, got {meters}");
            }
        }
        Ok(Arc::new(Field::new(
            GEO_WITHIN_RADIUS,
            DataType::Boolean,
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = map_rows(&args, |v| haversine_m(v[0], v[1], v[2], v[3]) <= v[4])?;
        Ok(ColumnarValue::Array(Arc::new(
            rows.collect::<BooleanArray>(),
        )))
    }
}

/// The `.lat` / `.lon` of a GeoJSON point object, if `object` is one.
pub fn geojson_point(object: &serde_json::Map<String, serde_json::Value>) -> Option<(f64, f64)> {
    if object.get("type")?.as_str()? != "Point" {
        return None;
    }
    let coordinates = object.get("coordinates")?.as_array()?;
    let lon = coordinates.first()?.as_f64()?;
    let lat = coordinates.get(1)?.as_f64()?;
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some((lat, lon))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_are_right() {
        // Oslo – Bergen is about 305 km; one degree of latitude about 111.2 km.
        let d = haversine_m(59.9139, 10.7522, 60.3913, 5.3221);
        assert!((d - 305_000.0).abs() < 5_000.0, "{d}");
        let degree = haversine_m(0.0, 0.0, 1.0, 0.0);
        assert!((degree - 111_195.0).abs() < 10.0, "{degree}");
        assert_eq!(haversine_m(10.0, 20.0, 10.0, 20.0), 0.0);
    }

    #[test]
    fn boxes_around_circles_hold_them() {
        for (lat, lon, meters) in [
            (59.9, 10.7, 5_000.0),
            (0.0, 179.99, 20_000.0),
            (-33.9, -179.9, 100_000.0),
            (89.9, 0.0, 50_000.0),
            (70.0, 30.0, 800_000.0),
        ] {
            let bounds = GeoBox::around(lat, lon, meters);
            // Points on the circle, every 5 degrees of bearing, are inside the box.
            for step in 0..72 {
                let bearing = (step as f64 * 5.0).to_radians();
                let angular = meters * 0.999 / EARTH_RADIUS_M;
                let (phi, lambda) = (lat.to_radians(), lon.to_radians());
                let phi2 =
                    (phi.sin() * angular.cos() + phi.cos() * angular.sin() * bearing.cos()).asin();
                let lambda2 = lambda
                    + (bearing.sin() * angular.sin() * phi.cos())
                        .atan2(angular.cos() - phi.sin() * phi2.sin());
                let mut lon2 = lambda2.to_degrees();
                if lon2 > 180.0 {
                    lon2 -= 360.0;
                }
                if lon2 < -180.0 {
                    lon2 += 360.0;
                }
                let lat2 = phi2.to_degrees();
                assert!(haversine_m(lat, lon, lat2, lon2) <= meters);
                assert!(
                    bounds.contains(lat2, lon2),
                    "{lat2},{lon2} outside {bounds:?}"
                );
            }
        }
        let crossing = GeoBox::around(0.0, 179.99, 20_000.0);
        let (west, east) = crossing.west_east.unwrap();
        assert!(west > east, "{crossing:?}");
        assert!(GeoBox::around(89.9, 0.0, 50_000.0).west_east.is_none());
    }

    #[test]
    fn geojson_points_are_recognized() {
        let point = serde_json::json!({"type": "Point", "coordinates": [10.75, 59.91]});
        assert_eq!(
            geojson_point(point.as_object().unwrap()),
            Some((59.91, 10.75))
        );
        let line = serde_json::json!({"type": "LineString", "coordinates": [[0, 0], [1, 1]]});
        assert_eq!(geojson_point(line.as_object().unwrap()), None);
        let bad = serde_json::json!({"type": "Point", "coordinates": [200, 10]});
        assert_eq!(geojson_point(bad.as_object().unwrap()), None);
    }
}
