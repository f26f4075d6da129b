//! The few CPython C-API functions the worker calls, looked up in libpython when the first
//! Python job arrives (`dlopen`), not linked: a worker that never runs Python never maps
//! libpython, so it costs no memory (linked, its relocations alone dirtied about 1.2 MB per
//! worker, and its touched pages 1.5 MB more, before any Python ran).
//!
//! Only functions are called through this table, never data symbols. The structs the calls
//! take (`PyConfig`, `PyStatus`) come from `pyo3-ffi`, whose layout is that of the Python
//! version the build is configured for; `interpreter::find` refuses any other version before
//! anything here is loaded.

use std::ffi::{CStr, CString, c_char, c_int, c_long, c_void};
use std::sync::OnceLock;

use pyo3_ffi::{Py_ssize_t, PyConfig, PyGILState_STATE, PyObject, PyStatus, PyThreadState};

macro_rules! api {
    ($($name:ident: fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        /// The C-API functions, resolved from the loaded libpython.
        #[allow(non_snake_case)]
        pub struct Api {
            $(pub $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
        }

        impl Api {
            /// Resolves every function in `lib` (a `dlopen` handle).
            fn resolve(lib: *mut c_void) -> Result<Api, String> {
                Ok(Api {
                    $($name: {
                        let name = concat!(stringify!($name), "\0");
                        // SAFETY: `lib` is a live handle from dlopen and `name` is
                        // NUL-terminated.
                        let f = unsafe { nix::libc::dlsym(lib, name.as_ptr().cast()) };
                        if f.is_null() {
                            return Err(format!("libpython has no {}", stringify!($name)));
                        }
                        // SAFETY: the symbol is CPython's function of that name, whose C
                        // signature (for the Python version the build is configured for) is
                        // the one declared here.
                        unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) $(-> $ret)?>(f) }
                    },)*
                })
            }
        }
    };
}

api! {
    PyConfig_InitPythonConfig: fn(*mut PyConfig);
    PyConfig_SetBytesString: fn(*mut PyConfig, *mut *mut nix::libc::wchar_t, *const c_char) -> PyStatus;
    PyConfig_Clear: fn(*mut PyConfig);
    Py_InitializeFromConfig: fn(*const PyConfig) -> PyStatus;
    PyStatus_Exception: fn(PyStatus) -> c_int;
    Py_FinalizeEx: fn() -> c_int;
    Py_CompileString: fn(*const c_char, *const c_char, c_int) -> *mut PyObject;
    PyImport_ExecCodeModule: fn(*const c_char, *mut PyObject) -> *mut PyObject;
    PyObject_GetAttrString: fn(*mut PyObject, *const c_char) -> *mut PyObject;
    PyObject_CallObject: fn(*mut PyObject, *mut PyObject) -> *mut PyObject;
    PyTuple_New: fn(Py_ssize_t) -> *mut PyObject;
    PyDict_New: fn() -> *mut PyObject;
    PyDict_SetItem: fn(*mut PyObject, *mut PyObject, *mut PyObject) -> c_int;
    PyTuple_SetItem: fn(*mut PyObject, Py_ssize_t, *mut PyObject) -> c_int;
    PyUnicode_FromStringAndSize: fn(*const c_char, Py_ssize_t) -> *mut PyObject;
    PyUnicode_AsUTF8AndSize: fn(*mut PyObject, *mut Py_ssize_t) -> *const c_char;
    PyBytes_FromStringAndSize: fn(*const c_char, Py_ssize_t) -> *mut PyObject;
    PyLong_FromLong: fn(c_long) -> *mut PyObject;
    PyErr_Print: fn();
    Py_DecRef: fn(*mut PyObject);
    PyGILState_Ensure: fn() -> PyGILState_STATE;
    PyGILState_Release: fn(PyGILState_STATE);
    PyEval_SaveThread: fn() -> *mut PyThreadState;
    PyEval_RestoreThread: fn(*mut PyThreadState);
    PyOS_BeforeFork: fn();
    PyOS_AfterFork_Parent: fn();
    PyOS_AfterFork_Child: fn();
}

static API: OnceLock<Api> = OnceLock::new();

/// Why libpython could not be loaded, and the errno of the failed open when it is one of the
/// environment's (a file limit reached: tried again by the next job, not a lasting failure).
pub struct LoadError {
    pub text: String,
    pub errno: Option<i32>,
}

/// Loads libpython from `path` (once per process) and resolves the table. The library is
/// loaded `RTLD_GLOBAL`, as an interpreter linked to it would see it, so the extension
/// modules the app imports (which expect libpython's symbols in the process) find them.
/// A failure is not remembered: nothing was initialized, so the next call tries again.
pub fn load(path: &str) -> Result<&'static Api, LoadError> {
    if let Some(api) = API.get() {
        return Ok(api);
    }
    let fail = |text: String| LoadError { text, errno: None };
    let c = CString::new(path).map_err(|_| fail(format!("{path}: a NUL byte in the path")))?;
    // SAFETY: dlopen of a path; libpython's initializers are safe to run (they only set up
    // static data).
    let lib =
        unsafe { nix::libc::dlopen(c.as_ptr(), nix::libc::RTLD_NOW | nix::libc::RTLD_GLOBAL) };
    if lib.is_null() {
        // SAFETY: dlerror returns the last error as a NUL-terminated string, or NULL.
        let why = unsafe { nix::libc::dlerror() };
        let why = if why.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: non-null, from dlerror, valid until the next dl* call.
            unsafe { CStr::from_ptr(why) }
                .to_string_lossy()
                .into_owned()
        };
        return Err(LoadError {
            errno: limit_in(&why),
            text: format!("cannot load libpython {path}: {why}"),
        });
    }
    let api = Api::resolve(lib).map_err(fail)?;
    Ok(API.get_or_init(|| api))
}

/// The limit a dlopen error names, if any: dlerror has only text (`...: Too many open
/// files`), and the errno dlopen leaves behind is not its open(2)'s.
fn limit_in(why: &str) -> Option<i32> {
    use nix::libc;
    // ENFILE's words contain EMFILE's: it goes first.
    [libc::ENFILE, libc::EMFILE, libc::ENOMEM]
        .into_iter()
        .find(|e| {
            let text = std::io::Error::from_raw_os_error(*e).to_string();
            let words = text.split(" (os error").next().unwrap_or(&text);
            why.ends_with(words)
        })
}

/// The table, once [`load`] has succeeded.
pub fn api() -> &'static Api {
    match API.get() {
        Some(api) => api,
        None => unreachable!("the Python C-API is used only after libpython was loaded"),
    }
}

/// Holds the GIL for its lifetime (`PyGILState_Ensure` / `Release`).
pub struct Gil(PyGILState_STATE);

impl Gil {
    pub fn acquire() -> Gil {
        // SAFETY: the interpreter is initialized (callers exist only after `start`), and
        // PyGILState_Ensure may be called from any thread in any state.
        Gil(unsafe { (api().PyGILState_Ensure)() })
    }
}

impl Drop for Gil {
    fn drop(&mut self) {
        // SAFETY: releases the state this guard's Ensure returned, on the same thread.
        unsafe { (api().PyGILState_Release)(self.0) }
    }
}

/// An owned reference, released on drop (the GIL must be held then).
pub struct Owned(pub *mut PyObject);

impl Owned {
    /// Takes a new reference from a C-API call; `None` when it returned NULL (an error is set).
    pub fn new(p: *mut PyObject) -> Option<Owned> {
        (!p.is_null()).then_some(Owned(p))
    }

    /// Gives the reference away (to a tuple, which steals it).
    pub fn into_raw(self) -> *mut PyObject {
        let p = self.0;
        std::mem::forget(self);
        p
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: a reference this value owns, released with the GIL held (every `Owned`
        // lives inside a `Gil` scope).
        unsafe { (api().Py_DecRef)(self.0) }
    }
}

/// A Python `str` from Rust text.
pub fn str_obj(s: &str) -> Option<Owned> {
    // SAFETY: a pointer and length into a live &str; CPython copies the bytes.
    Owned::new(unsafe {
        (api().PyUnicode_FromStringAndSize)(s.as_ptr().cast(), s.len() as Py_ssize_t)
    })
}

/// A Python `bytes` from Rust bytes.
pub fn bytes_obj(b: &[u8]) -> Option<Owned> {
    // SAFETY: a pointer and length into a live slice; CPython copies the bytes.
    Owned::new(unsafe {
        (api().PyBytes_FromStringAndSize)(b.as_ptr().cast(), b.len() as Py_ssize_t)
    })
}

/// A Python `dict` of `bytes` to `bytes` (a job hash, as redis-py returns it).
pub fn bytes_dict<'a>(items: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Option<Owned> {
    // SAFETY: a new empty dict; GIL held by the caller, as for every call here.
    let dict = Owned::new(unsafe { (api().PyDict_New)() })?;
    for (k, v) in items {
        let (k, v) = (bytes_obj(k)?, bytes_obj(v)?);
        // SAFETY: live objects; PyDict_SetItem takes its own references to both.
        if unsafe { (api().PyDict_SetItem)(dict.0, k.0, v.0) } != 0 {
            return None;
        }
    }
    Some(dict)
}

/// A Python `int`.
pub fn int_obj(n: i64) -> Option<Owned> {
    // SAFETY: plain value conversion.
    Owned::new(unsafe { (api().PyLong_FromLong)(n as c_long) })
}

/// The text of a Python `str`.
pub fn text_of(o: &Owned) -> Option<String> {
    let mut len: Py_ssize_t = 0;
    // SAFETY: `o` is a live object; the returned buffer lives as long as the object, and we
    // copy it before `o` is dropped.
    let p = unsafe { (api().PyUnicode_AsUTF8AndSize)(o.0, &mut len) };
    if p.is_null() {
        return None;
    }
    // SAFETY: CPython returns `len` valid bytes of UTF-8 at `p`.
    let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len as usize) };
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// Calls `func(*args)`; `None` when it raised (the error is printed to stderr).
pub fn call(func: *mut PyObject, args: Vec<Owned>) -> Option<Owned> {
    // SAFETY: the tuple is fresh and each item's reference is stolen by SetItem.
    let tuple = Owned::new(unsafe { (api().PyTuple_New)(args.len() as Py_ssize_t) })?;
    for (i, a) in args.into_iter().enumerate() {
        // SAFETY: in-range index of a fresh tuple; SetItem steals the reference.
        unsafe { (api().PyTuple_SetItem)(tuple.0, i as Py_ssize_t, a.into_raw()) };
    }
    // SAFETY: `func` is a live callable and `tuple` a live tuple.
    let result = Owned::new(unsafe { (api().PyObject_CallObject)(func, tuple.0) });
    if result.is_none() {
        print_error();
    }
    result
}

/// Prints (and clears) the pending Python error to stderr, as the interpreter would.
pub fn print_error() {
    // SAFETY: prints the error indicator if set; harmless if not.
    unsafe { (api().PyErr_Print)() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_in_a_dlopen_error_is_recognized() {
        use nix::libc;
        let e = "/x/libpython3.11.so.1.0: cannot open shared object file: ";
        assert_eq!(
            limit_in(&format!("{e}Too many open files")),
            Some(libc::EMFILE)
        );
        assert_eq!(
            limit_in(&format!("{e}Too many open files in system")),
            Some(libc::ENFILE)
        );
        assert_eq!(limit_in(&format!("{e}No such file or directory")), None);
    }
}
