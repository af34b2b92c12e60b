//! Options declared once. [`options!`](crate::options!) declares a set of options (name, type,
//! default, accepted values, doc) and generates the struct, its `Default`, `set(key, value)`
//! and the table the documentation is generated from; SQL `OPTIONS (...)`, the Rust builders
//! and job files all set options through it.

use std::fmt::Write as _;
use std::marker::PhantomData;

/// An option value: a string, a number, a boolean or a list (in JSON: the plain value).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum OptionValue {
    /// `'text'`.
    Str(String),
    /// `3`, `0.001`.
    Num(f64),
    /// `true` / `false`.
    Bool(bool),
    /// `[512, 256]`.
    List(Vec<OptionValue>),
}

impl From<&str> for OptionValue {
    fn from(s: &str) -> Self {
        Self::Str(s.to_string())
    }
}
impl From<String> for OptionValue {
    fn from(s: String) -> Self {
        Self::Str(s)
    }
}
impl From<f64> for OptionValue {
    fn from(n: f64) -> Self {
        Self::Num(n)
    }
}
impl From<i32> for OptionValue {
    fn from(n: i32) -> Self {
        Self::Num(n as f64)
    }
}
impl From<bool> for OptionValue {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}
impl<T: Into<OptionValue>> From<Vec<T>> for OptionValue {
    fn from(v: Vec<T>) -> Self {
        Self::List(v.into_iter().map(Into::into).collect())
    }
}

impl std::fmt::Display for OptionValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Str(s) => write!(f, "'{s}'"),
            Self::Num(n) => write!(f, "{n}"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::List(items) => {
                let items: Vec<_> = items.iter().map(ToString::to_string).collect();
                write!(f, "[{}]", items.join(", "))
            }
        }
    }
}

/// How the values of one option are read and described: what [`options!`](crate::options!)
/// calls with each value given.
pub trait Kind {
    /// The field's type.
    type Out;
    /// Reads `value` given for option `key`; the error says what `key` accepts.
    fn parse(&self, key: &str, value: &OptionValue) -> Result<Self::Out, String>;
    /// The accepted values, for the documentation.
    fn accepts(&self) -> String;
    /// Whether a value is a list (so that a list of lists is a list of values).
    fn is_list(&self) -> bool {
        false
    }
}

/// A default value as the documentation shows it.
pub trait Show {
    /// `5`, `'adam'`, `[512, 256]`, or empty for none.
    fn show(&self) -> String;
}

macro_rules! show_display {
    ($($t:ty),*) => {$(
        impl Show for $t {
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
show_display!(usize, u32, u64, f64, bool);

impl Show for String {
    fn show(&self) -> String {
        format!("'{self}'")
    }
}
impl<T: Show> Show for Vec<T> {
    fn show(&self) -> String {
        let items: Vec<_> = self.iter().map(Show::show).collect();
        format!("[{}]", items.join(", "))
    }
}
impl<T: Show> Show for Option<T> {
    fn show(&self) -> String {
        self.as_ref().map(Show::show).unwrap_or_default()
    }
}

/// Any string.
pub struct Text;

impl Kind for Text {
    type Out = String;
    fn parse(&self, key: &str, value: &OptionValue) -> Result<String, String> {
        match value {
            OptionValue::Str(s) => Ok(s.clone()),
            other => Err(format!("{key} must be a string, not {other}")),
        }
    }
    fn accepts(&self) -> String {
        "string".into()
    }
}

/// One of a few words, compared without case; the value is the lower-case word.
pub struct OneOf(pub &'static [&'static str]);

impl Kind for OneOf {
    type Out = String;
    fn parse(&self, key: &str, value: &OptionValue) -> Result<String, String> {
        let word = Text.parse(key, value)?.to_ascii_lowercase();
        if self.0.contains(&word.as_str()) {
            return Ok(word);
        }
        Err(format!("{key} '{word}' is not {}", self.accepts()))
    }
    fn accepts(&self) -> String {
        let quoted: Vec<_> = self.0.iter().map(|w| format!("'{w}'")).collect();
        match quoted.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

/// A string that `check` accepts (it returns the reason otherwise).
pub struct Checked(pub fn(&str) -> Result<(), String>, pub &'static str);

impl Kind for Checked {
    type Out = String;
    fn parse(&self, key: &str, value: &OptionValue) -> Result<String, String> {
        let s = Text.parse(key, value)?;
        (self.0)(&s).map_err(|e| format!("{key}: {e}"))?;
        Ok(s)
    }
    fn accepts(&self) -> String {
        self.1.into()
    }
}

/// `true` or `false`.
pub struct Flag;

impl Kind for Flag {
    type Out = bool;
    fn parse(&self, key: &str, value: &OptionValue) -> Result<bool, String> {
        match value {
            OptionValue::Bool(b) => Ok(*b),
            other => Err(format!("{key} must be true or false, not {other}")),
        }
    }
    fn accepts(&self) -> String {
        "true or false".into()
    }
}

/// A finite number.
pub struct Number;

impl Kind for Number {
    type Out = f64;
    fn parse(&self, key: &str, value: &OptionValue) -> Result<f64, String> {
        match value {
            OptionValue::Num(n) if n.is_finite() => Ok(*n),
            other => Err(format!("{key} must be a number, not {other}")),
        }
    }
    fn accepts(&self) -> String {
        "number".into()
    }
}

/// A number above zero.
pub struct Positive;

impl Kind for Positive {
    type Out = f64;
    fn parse(&self, key: &str, value: &OptionValue) -> Result<f64, String> {
        let n = Number.parse(key, value)?;
        if n <= 0.0 {
            return Err(format!("{key} must be positive, not {n}"));
        }
        Ok(n)
    }
    fn accepts(&self) -> String {
        "number > 0".into()
    }
}

/// A number of at least zero.
pub struct NonNegative;

impl Kind for NonNegative {
    type Out = f64;
    fn parse(&self, key: &str, value: &OptionValue) -> Result<f64, String> {
        let n = Number.parse(key, value)?;
        if n < 0.0 {
            return Err(format!("{key} must be at least 0, not {n}"));
        }
        Ok(n)
    }
    fn accepts(&self) -> String {
        "number >= 0".into()
    }
}

/// A rate in [0, 1).
pub struct Rate;

impl Kind for Rate {
    type Out = f64;
    fn parse(&self, key: &str, value: &OptionValue) -> Result<f64, String> {
        let n = Number.parse(key, value)?;
        if !(0.0..1.0).contains(&n) {
            return Err(format!("{key} must be in [0, 1), not {n}"));
        }
        Ok(n)
    }
    fn accepts(&self) -> String {
        "number in [0, 1)".into()
    }
}

/// A whole number from `min` to `max` (at most `u32::MAX`), as `T`.
pub struct Count<T> {
    min: u32,
    max: u32,
    odd: bool,
    out: PhantomData<T>,
}

/// A whole number of at least `min`.
pub const fn count<T>(min: u32) -> Count<T> {
    Count {
        min,
        max: u32::MAX,
        odd: false,
        out: PhantomData,
    }
}

impl<T> Count<T> {
    /// At most `max`.
    pub const fn max(self, max: u32) -> Self {
        Self { max, ..self }
    }

    /// Odd only.
    pub const fn odd(self) -> Self {
        Self { odd: true, ..self }
    }
}

impl<T: TryFrom<u32>> Kind for Count<T> {
    type Out = T;
    fn parse(&self, key: &str, value: &OptionValue) -> Result<T, String> {
        let n = Number.parse(key, value)?;
        if n.fract() != 0.0 || n < self.min as f64 || n > self.max as f64 {
            return Err(if self.max == u32::MAX {
                format!(
                    "{key} must be a whole number of at least {}, not {n}",
                    self.min
                )
            } else {
                format!(
                    "{key} must be a whole number from {} to {}, not {n}",
                    self.min, self.max
                )
            });
        }
        if self.odd && (n as u32).is_multiple_of(2) {
            return Err(format!(
                "{key} must be odd so that 'same' padding is symmetric, got {n}"
            ));
        }
        T::try_from(n as u32).map_err(|_| format!("{key} {n} is too large"))
    }
    fn accepts(&self) -> String {
        let odd = if self.odd { "odd " } else { "" };
        if self.max == u32::MAX {
            format!("{odd}whole number >= {}", self.min)
        } else {
            format!("{odd}whole number {}..{}", self.min, self.max)
        }
    }
}

/// One of a few whole numbers.
pub struct Among(pub &'static [usize]);

impl Kind for Among {
    type Out = usize;
    fn parse(&self, key: &str, value: &OptionValue) -> Result<usize, String> {
        let n = Number.parse(key, value)?;
        match self.0.iter().find(|&&m| m as f64 == n) {
            Some(&m) => Ok(m),
            None => Err(format!("{key} must be one of {}, not {n}", self.accepts())),
        }
    }
    fn accepts(&self) -> String {
        let items: Vec<_> = self.0.iter().map(usize::to_string).collect();
        items.join(", ")
    }
}

/// A range `[min, max]` within `[lo, hi]`; a single number `x` stands for `around(x)`, such as
/// `[-x, x]` for an angle or `[1 - x, 1 + x]` for a factor.
pub struct Interval {
    /// The lowest `min`.
    pub lo: f64,
    /// The highest `max`.
    pub hi: f64,
    /// The range a single number stands for.
    pub around: fn(f64) -> [f64; 2],
    /// How a single number reads, for the documentation, e.g. `"x: [-x, x]"`.
    pub number: &'static str,
}

impl Kind for Interval {
    type Out = Vec<f64>;
    fn parse(&self, key: &str, value: &OptionValue) -> Result<Vec<f64>, String> {
        let [min, max] = match value {
            OptionValue::Num(x) => (self.around)(*x),
            OptionValue::List(items) => match items[..] {
                [OptionValue::Num(min), OptionValue::Num(max)] => [min, max],
                _ => [f64::NAN; 2],
            },
            _ => [f64::NAN; 2],
        };
        // NaN fails every comparison.
        if !(self.lo <= min && min <= max && max <= self.hi && min.is_finite() && max.is_finite()) {
            return Err(format!("{key} must be {}, not {value}", self.accepts()));
        }
        Ok(vec![min, max])
    }
    fn accepts(&self) -> String {
        let within = if self.hi.is_finite() {
            format!("within [{}, {}]", self.lo, self.hi)
        } else {
            format!("of at least {}", self.lo)
        };
        format!(
            "a number ({}) or [min, max] {within} with min <= max",
            self.number
        )
    }
    fn is_list(&self) -> bool {
        true
    }
}

/// A list of values of one kind, such as `[512, 256]`.
pub struct ListOf<K>(pub K);

impl<K: Kind> Kind for ListOf<K> {
    type Out = Vec<K::Out>;
    fn parse(&self, key: &str, value: &OptionValue) -> Result<Self::Out, String> {
        match value {
            OptionValue::List(items) => items.iter().map(|i| self.0.parse(key, i)).collect(),
            other => Err(format!(
                "{key} must be a list such as [512, 256], not {other}"
            )),
        }
    }
    fn accepts(&self) -> String {
        format!("[{}, ...]", self.0.accepts())
    }
    fn is_list(&self) -> bool {
        true
    }
}

/// An option that is unset by default; setting it gives `Some`.
pub struct Maybe<K>(pub K);

impl<K: Kind> Kind for Maybe<K> {
    type Out = Option<K::Out>;
    fn parse(&self, key: &str, value: &OptionValue) -> Result<Self::Out, String> {
        self.0.parse(key, value).map(Some)
    }
    fn accepts(&self) -> String {
        self.0.accepts()
    }
    fn is_list(&self) -> bool {
        self.0.is_list()
    }
}

/// One option as the documentation shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct OptionDoc {
    /// Its name.
    pub name: &'static str,
    /// What values it accepts.
    pub accepts: String,
    /// Whether its value is a list.
    pub list: bool,
    /// Its default, empty when unset.
    pub default: String,
    /// What it does.
    pub doc: String,
}

/// A set of options declared with [`options!`](crate::options!).
pub trait Options: Default {
    /// Sets option `key` (any case) from `value`; the error names the option and what it
    /// accepts, or lists the known options.
    fn set(&mut self, key: &str, value: &OptionValue) -> Result<(), String>;
    /// Every option with its accepted values, default and doc, in declaration order.
    fn docs() -> Vec<OptionDoc>;
    /// Whether `key` (lower case) is one of these options.
    fn knows(key: &str) -> bool {
        Self::docs().iter().any(|d| d.name == key)
    }
}

/// The documentation of option `name` of kind `kind` with default `default`.
pub fn doc_of<K: Kind>(name: &'static str, default: &K::Out, kind: &K, doc: &[&str]) -> OptionDoc
where
    K::Out: Show,
{
    OptionDoc {
        name,
        accepts: kind.accepts(),
        list: kind.is_list(),
        default: default.show(),
        doc: doc.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" "),
    }
}

/// The error for an unknown option.
pub fn unknown(key: &str, docs: &[OptionDoc]) -> String {
    let known: Vec<_> = docs.iter().map(|d| d.name).collect();
    format!("unknown option '{key}' (known: {})", known.join(", "))
}

/// A Markdown table of options.
pub fn markdown(docs: &[OptionDoc]) -> String {
    let mut out = String::from("| option | accepts | default | meaning |\n|---|---|---|---|\n");
    for d in docs {
        let cell = |s: &str| s.replace('|', "\\|");
        let default = if d.default.is_empty() {
            String::new()
        } else {
            format!("`{}`", d.default)
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} |",
            d.name,
            cell(&d.accepts),
            cell(&default),
            cell(&d.doc)
        );
    }
    out
}

/// Declares a set of options once: each a doc comment, `name: Type = default, kind;` where
/// `kind` is a [`Kind`] whose output is `Type`, then any groups of options declared elsewhere
/// as `..field: Group;` (their options are set and documented as this set's own). Generates
/// the struct (public fields), its `Default` and [`Options`].
///
/// ```
/// quiver_engine::options! {
///     /// Training options.
///     pub struct Train {
///         /// Passes over the data.
///         epochs: usize = 5, quiver_engine::options::count(1);
///     }
/// }
/// use quiver_engine::options::Options;
/// let mut t = Train::default();
/// t.set("EPOCHS", &3.0.into()).unwrap();
/// assert_eq!(t.epochs, 3);
/// assert!(t.set("epochs", &0.0.into()).is_err());
/// ```
#[macro_export]
macro_rules! options {
    (
        $(#[doc = $sdoc:literal])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])+
                $field:ident : $ty:ty = $default:expr, $kind:expr;
            )*
            $(..$group:ident : $gty:ty;)*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq)]
        $vis struct $name {
            $(
                $(#[doc = $doc])+
                pub $field: $ty,
            )*
            $(
                #[doc = concat!("The options of [`", stringify!($gty), "`].")]
                pub $group: $gty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    $($field: $default,)*
                    $($group: Default::default(),)*
                }
            }
        }

        impl $crate::options::Options for $name {
            fn set(
                &mut self,
                key: &str,
                value: &$crate::options::OptionValue,
            ) -> ::std::result::Result<(), String> {
                match key.to_ascii_lowercase().as_str() {
                    $(stringify!($field) => {
                        self.$field = $crate::options::Kind::parse(&$kind, stringify!($field), value)?;
                    })*
                    other => {
                        $(
                            if <$gty as $crate::options::Options>::knows(other) {
                                return $crate::options::Options::set(&mut self.$group, other, value);
                            }
                        )*
                        return Err($crate::options::unknown(other, &Self::docs()));
                    }
                }
                Ok(())
            }

            fn docs() -> Vec<$crate::options::OptionDoc> {
                let defaults = Self::default();
                #[allow(unused_mut)]
                let mut docs = vec![$(
                    $crate::options::doc_of(
                        stringify!($field),
                        &defaults.$field,
                        &$kind,
                        &[$($doc),+],
                    ),
                )*];
                $(docs.extend(<$gty as $crate::options::Options>::docs());)*
                docs
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::options! {
        /// Test options.
        struct Sample {
            /// Layer sizes.
            units: Vec<usize> = vec![4, 2], ListOf(count(1));
            /// Kernel side,
            /// odd.
            kernel: usize = 3, count(1).odd();
            /// Which.
            mode: String = "a".into(), OneOf(&["a", "b", "c"]);
            /// Optional input.
            input: Option<String> = None, Maybe(Text);
            /// Tries.
            retries: u32 = 0, count(0).max(100);
        }
    }

    crate::options! {
        /// Options with a group of others.
        struct Outer {
            /// An angle.
            angle: Option<Vec<f64>> = None,
                Maybe(Interval { lo: -180.0, hi: 180.0, around: |x| [-x, x], number: "x: [-x, x]" });
            ..sample: Sample;
        }
    }

    #[test]
    fn groups_are_set_and_documented_as_their_own_and_intervals_read_both_forms() {
        let mut o = Outer::default();
        o.set("angle", &15.0.into()).unwrap();
        assert_eq!(o.angle, Some(vec![-15.0, 15.0]));
        o.set("Angle", &vec![10.0, 20.0].into()).unwrap();
        o.set("KERNEL", &5.0.into()).unwrap();
        assert_eq!((o.angle, o.sample.kernel), (Some(vec![10.0, 20.0]), 5));
        let err = |k: &str, v: OptionValue| Outer::default().set(k, &v).unwrap_err();
        assert_eq!(
            err("angle", vec![20.0, 10.0].into()),
            "angle must be a number (x: [-x, x]) or [min, max] within [-180, 180] with min <= \
             max, not [20, 10]"
        );
        assert_eq!(
            err("angle", 200.0.into()),
            "angle must be a number (x: [-x, x]) or [min, max] within [-180, 180] with min <= \
             max, not 200"
        );
        assert_eq!(
            err("kernel", 4.into()),
            Sample::default().set("kernel", &4.into()).unwrap_err()
        );
        assert_eq!(
            err("nope", 1.into()),
            "unknown option 'nope' (known: angle, units, kernel, mode, input, retries)"
        );
        let jitter = Interval {
            lo: 0.0,
            hi: f64::INFINITY,
            around: |x| [0.0, x],
            number: "x: [0, x]",
        };
        assert_eq!(jitter.parse("f", &2.0.into()).unwrap(), vec![0.0, 2.0]);
        assert!(jitter.parse("f", &f64::INFINITY.into()).is_err());
        let docs = Outer::docs();
        assert_eq!(
            (docs.len(), docs[0].list, docs[0].default.as_str()),
            (6, true, "")
        );
    }

    #[test]
    fn sets_checks_and_documents_each_option() {
        let mut s = Sample::default();
        s.set("Units", &vec![8, 4].into()).unwrap();
        s.set("mode", &"B".into()).unwrap();
        s.set("input", &"x".into()).unwrap();
        assert_eq!(
            (s.units.clone(), s.mode.as_str(), s.input.as_deref()),
            (vec![8, 4], "b", Some("x"))
        );
        let err = |k: &str, v: OptionValue| Sample::default().set(k, &v).unwrap_err();
        assert_eq!(
            err("kernel", 4.into()),
            "kernel must be odd so that 'same' padding is symmetric, got 4"
        );
        assert_eq!(
            err("kernel", 0.5.into()),
            "kernel must be a whole number of at least 1, not 0.5"
        );
        assert_eq!(err("mode", "d".into()), "mode 'd' is not 'a', 'b' or 'c'");
        assert_eq!(
            err("units", 3.into()),
            "units must be a list such as [512, 256], not 3"
        );
        assert_eq!(
            err("retries", 101.into()),
            "retries must be a whole number from 0 to 100, not 101"
        );
        assert_eq!(
            err("colour", 1.into()),
            "unknown option 'colour' (known: units, kernel, mode, input, retries)"
        );
        let docs = Sample::docs();
        assert_eq!(
            docs[1],
            OptionDoc {
                name: "kernel",
                accepts: "odd whole number >= 1".into(),
                list: false,
                default: "3".into(),
                doc: "Kernel side, odd.".into(),
            }
        );
        assert_eq!(
            markdown(&docs[2..4]),
            "| option | accepts | default | meaning |\n|---|---|---|---|\n\
             | `mode` | 'a', 'b' or 'c' | `'a'` | Which. |\n\
             | `input` | string |  | Optional input. |\n"
        );
    }
}
