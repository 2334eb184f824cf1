//! Label enums: a fixed set of values for one metric label, so series stay bounded and a
//! value is spelled once.

/// Declares an enum whose variants are label values: `Variant = "label"`. It gets
/// `ALL` (every value in declaration order, so `value as usize` indexes a list built from
/// it), `as_str` (the label value) and `Display`.
///
/// ```
/// rmb_common::label_enum! {
///     /// Why a call ended.
///     pub enum End {
///         /// It was answered.
///         Answered = "answered",
///         /// Nobody answered in time.
///         TimedOut = "timed_out",
///     }
/// }
/// assert_eq!(End::TimedOut.as_str(), "timed_out");
/// assert_eq!(End::ALL.len(), 2);
/// ```
#[macro_export]
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident = $label:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$variant_meta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order: `value as usize` is its index here.
            $vis const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label value.
            $vis fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label),+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    crate::label_enum! {
        /// A test enum.
        pub enum Color {
            /// Red.
            Red = "red",
            /// Dark blue.
            DarkBlue = "dark_blue",
            /// Green.
            Green = "green",
        }
    }

    #[test]
    fn all_lists_every_value_in_declaration_order() {
        assert_eq!(Color::ALL, &[Color::Red, Color::DarkBlue, Color::Green]);
        for (i, c) in Color::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?}");
        }
    }

    #[test]
    fn labels_are_the_declared_strings() {
        assert_eq!(Color::DarkBlue.as_str(), "dark_blue");
        assert_eq!(Color::Green.to_string(), "green");
    }
}
