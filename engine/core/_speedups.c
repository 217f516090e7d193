/* The compiled batch kernels of the hot path; engine/core/speedups.py holds their pure-Python twins.
 *
 * Each function takes and returns whole batches (lists), never one recipient, and has exactly the
 * semantics of its twin in engine/core/speedups.py: tests/property/test_speedups.py checks the two
 * against each other on generated input. Only CPython's public C API is used (the full one, not
 * the limited API: the str storage macros are what make these loops fast); every function checks
 * its arguments and raises TypeError or ValueError instead of crashing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* ---- helpers ------------------------------------------------------------------------------ */

/* Append the int `i` to `list`; -1 with an exception set on failure. */
static int
append_index(PyObject *list, Py_ssize_t i)
{
    PyObject *index = PyLong_FromSsize_t(i);
    if (index == NULL)
        return -1;
    int rc = PyList_Append(list, index);
    Py_DECREF(index);
    return rc;
}

/* Whether `o` is a list; if not, a TypeError naming `fn` ("phone_keys() takes a list of str"). */
static int
is_list(PyObject *o, const char *fn)
{
    if (PyList_Check(o))
        return 1;
    PyErr_Format(PyExc_TypeError, "%s() takes a list of str", fn);
    return 0;
}

/* ---- project_block ------------------------------------------------------------------------ */

/* Split a quote-free CSV block (whole lines joined by "\n", no final newline) whose every line has
 * exactly ncols fields, and keep the fields at `positions`: one tuple per line, or None when some
 * line has another number of fields or the line ends are mixed (LF lines beside CRLF lines, or a
 * lone "\r"). The caller then splits the block line by line and reports each bad row. */
static PyObject *
project_block(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "project_block(block, delimiter, ncols, positions)");
        return NULL;
    }
    PyObject *block = args[0], *delim = args[1], *positions = args[3];
    if (!PyUnicode_Check(block) || !PyUnicode_Check(delim) || PyUnicode_GET_LENGTH(delim) != 1) {
        PyErr_SetString(PyExc_TypeError, "block must be a str and delimiter a 1-character str");
        return NULL;
    }
    Py_ssize_t ncols = PyLong_AsSsize_t(args[2]);
    if (ncols == -1 && PyErr_Occurred())
        return NULL;
    if (!PyTuple_Check(positions) || ncols < 1) {
        PyErr_SetString(PyExc_TypeError, "ncols must be positive and positions a tuple");
        return NULL;
    }
    Py_ssize_t npos = PyTuple_GET_SIZE(positions);
    Py_ssize_t *pos = PyMem_Malloc((size_t)(npos + 1) * sizeof(Py_ssize_t));
    Py_ssize_t *start = PyMem_Malloc((size_t)(ncols + 1) * sizeof(Py_ssize_t));
    if (pos == NULL || start == NULL) {
        PyMem_Free(pos);
        PyMem_Free(start);
        return PyErr_NoMemory();
    }
    PyObject *out = NULL;
    for (Py_ssize_t k = 0; k < npos; k++) {
        Py_ssize_t p = PyLong_AsSsize_t(PyTuple_GET_ITEM(positions, k));
        if (p == -1 && PyErr_Occurred())
            goto done;
        if (p < 0 || p >= ncols) {
            PyErr_SetString(PyExc_ValueError, "a position is outside the row");
            goto done;
        }
        pos[k] = p;
    }
    Py_UCS4 d = PyUnicode_READ_CHAR(delim, 0);
    if (d == '\n' || d == '\r') {
        PyErr_SetString(PyExc_ValueError, "the delimiter cannot be a line end");
        goto done;
    }
    const int kind = PyUnicode_KIND(block);
    const void *data = PyUnicode_DATA(block);
    const Py_ssize_t n = PyUnicode_GET_LENGTH(block);
    Py_ssize_t found = PyUnicode_FindChar(block, '\r', 0, n, 1);
    if (found == -2)
        goto done;
    const int crlf = found >= 0;
    out = PyList_New(0);
    if (out == NULL)
        goto done;
    Py_ssize_t i = 0;
    for (;;) {
        /* One line: record where each field starts; stop at "\n" or the block's end. */
        Py_ssize_t f = 0, cr = 0;
        start[0] = i;
        for (; i < n; i++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            if (c == d) {
                if (++f >= ncols)
                    goto not_uniform;
                start[f] = i + 1;
            }
            else if (c == '\n')
                break;
            else if (c == '\r')
                cr++;
        }
        if (f != ncols - 1)
            goto not_uniform;
        Py_ssize_t end = i; /* the line's end, before its "\n" */
        if (crlf) {
            /* Uniform CRLF: this line ends with "\r", and holds no other. */
            if (cr != 1 || end == start[0] || PyUnicode_READ(kind, data, end - 1) != '\r')
                goto not_uniform;
            end--;
        }
        start[ncols] = end + 1; /* as if a delimiter followed the last field */
        PyObject *row = PyTuple_New(npos);
        if (row == NULL)
            goto fail;
        for (Py_ssize_t k = 0; k < npos; k++) {
            Py_ssize_t p = pos[k];
            PyObject *v = PyUnicode_Substring(block, start[p], start[p + 1] - 1);
            if (v == NULL) {
                Py_DECREF(row);
                goto fail;
            }
            PyTuple_SET_ITEM(row, k, v);
        }
        int rc = PyList_Append(out, row);
        Py_DECREF(row);
        if (rc < 0)
            goto fail;
        if (i >= n)
            break;
        i++; /* past the "\n" */
    }
    goto done;
not_uniform:
    Py_CLEAR(out);
    out = Py_NewRef(Py_None);
    goto done;
fail:
    Py_CLEAR(out);
done:
    PyMem_Free(pos);
    PyMem_Free(start);
    return out;
}

/* ---- phone_keys --------------------------------------------------------------------------- */

/* An 11-digit national mobile in `d` (ASCII digits, the first 1)? Returns its value or -1. */
static long long
national_value(const Py_UCS4 *d, Py_ssize_t n)
{
    if (n != 11 || d[0] != '1')
        return -1;
    long long v = 0;
    for (Py_ssize_t k = 0; k < 11; k++) {
        if (d[k] < '0' || d[k] > '9')
            return -1;
        v = v * 10 + (long long)(d[k] - '0');
    }
    return v;
}

/* The cheap tiers of normalization for one value that is not already clean, as
 * _py_phone_keys in engine/core/speedups.py describes them: (2) spaces and dashes removed, then an
 * optional +86, 0086 or 86 before 11 digits starting with 1; (3) Excel's 13800138000.0 (one dot,
 * then only zeros) and 11 full-width digits starting with １. Returns the national number's
 * value, or -1. */
static long long
cheap_tiers(PyObject *s)
{
    const int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    const Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    Py_UCS4 buf[16];
    Py_ssize_t m = 0;
    /* Tier 2. */
    int fits = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c == ' ' || c == '-')
            continue;
        if (m == 16) {
            fits = 0;
            break;
        }
        buf[m++] = c;
    }
    if (fits) {
        long long v = national_value(buf, m);
        if (v < 0 && m == 14 && buf[0] == '+' && buf[1] == '8' && buf[2] == '6')
            v = national_value(buf + 3, 11);
        else if (v < 0 && m == 15 && buf[0] == '0' && buf[1] == '0' && buf[2] == '8' && buf[3] == '6')
            v = national_value(buf + 4, 11);
        else if (v < 0 && m == 13 && buf[0] == '8' && buf[1] == '6')
            v = national_value(buf + 2, 11);
        if (v >= 0)
            return v;
    }
    /* Tier 3: Excel's trailing .0, else full-width digits (the raw value, nothing removed). */
    Py_ssize_t dot = PyUnicode_FindChar(s, '.', 0, n, 1);
    if (dot >= 0) {
        if (dot != 11 || n == 12)
            return -1;
        for (Py_ssize_t i = 12; i < n; i++)
            if (PyUnicode_READ(kind, data, i) != '0')
                return -1;
        for (Py_ssize_t i = 0; i < 11; i++)
            buf[i] = PyUnicode_READ(kind, data, i);
        return national_value(buf, 11);
    }
    if (n != 11)
        return -1;
    for (Py_ssize_t i = 0; i < 11; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 0xFF10 || c > 0xFF19)
            return -1;
        buf[i] = c - 0xFF10 + '0';
    }
    return national_value(buf, 11);
}

/* The 11-digit string of a national number's value. */
static PyObject *
national_str(long long v)
{
    PyObject *out = PyUnicode_New(11, 127);
    if (out == NULL)
        return NULL;
    Py_UCS1 *c = PyUnicode_1BYTE_DATA(out);
    for (int k = 10; k >= 0; k--) {
        c[k] = (Py_UCS1)('0' + v % 10);
        v /= 10;
    }
    return out;
}

/* For a list of phone values: each clean one (11 ASCII digits starting with 1) as an int; each
 * one the cheap tiers read replaced in `numbers` by its 11-digit national string, and keyed; 0 for
 * the rest, whose positions come back as "odd" (for the full parser). */
static PyObject *
phone_keys(PyObject *Py_UNUSED(module), PyObject *numbers)
{
    if (!is_list(numbers, "phone_keys"))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(numbers);
    PyObject *keys = PyList_New(n);
    PyObject *odd = PyList_New(0);
    PyObject *zero = PyLong_FromLong(0);
    if (keys == NULL || odd == NULL || zero == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PyList_GET_ITEM(numbers, i);
        if (!PyUnicode_Check(s)) {
            PyErr_SetString(PyExc_TypeError, "phone_keys() takes a list of str");
            goto fail;
        }
        long long v = -1;
        if (PyUnicode_GET_LENGTH(s) == 11 && PyUnicode_IS_ASCII(s)) {
            const Py_UCS1 *c = PyUnicode_1BYTE_DATA(s);
            if (c[0] == '1') {
                v = 0;
                for (int k = 0; k < 11; k++) {
                    if (c[k] < '0' || c[k] > '9') {
                        v = -1;
                        break;
                    }
                    v = v * 10 + (c[k] - '0');
                }
            }
        }
        if (v < 0 && (v = cheap_tiers(s)) >= 0) {
            PyObject *national = national_str(v);
            if (national == NULL)
                goto fail;
            PyList_SetItem(numbers, i, national); /* steals it, releases the raw value */
        }
        PyObject *key;
        if (v >= 0) {
            key = PyLong_FromLongLong(v);
            if (key == NULL)
                goto fail;
        }
        else {
            if (append_index(odd, i) < 0)
                goto fail;
            key = Py_NewRef(zero);
        }
        PyList_SET_ITEM(keys, i, key);
    }
    Py_DECREF(zero);
    PyObject *result = PyTuple_Pack(2, keys, odd);
    Py_DECREF(keys);
    Py_DECREF(odd);
    return result;
fail:
    /* PyList_New(n) holds NULLs until filled: list_dealloc skips them. */
    Py_XDECREF(keys);
    Py_XDECREF(odd);
    Py_XDECREF(zero);
    return NULL;
}

/* ---- first_seen --------------------------------------------------------------------------- */

/* Add every key to `seen`; return the positions of the keys that were there already (seen in an
 * earlier batch, or earlier in this one). One hash insertion per key. */
static PyObject *
first_seen(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PySet_Check(args[0]) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "first_seen(seen: set, keys: list)");
        return NULL;
    }
    PyObject *seen = args[0], *keys = args[1];
    PyObject *dup = PyList_New(0);
    if (dup == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
        Py_ssize_t before = PySet_GET_SIZE(seen);
        PyObject *key = Py_NewRef(PyList_GET_ITEM(keys, i)); /* hashing may run Python code */
        int rc = PySet_Add(seen, key);
        Py_DECREF(key);
        if (rc < 0)
            goto fail;
        if (PySet_GET_SIZE(seen) == before && append_index(dup, i) < 0)
            goto fail;
    }
    return dup;
fail:
    Py_DECREF(dup);
    return NULL;
}

/* ---- claim_keys --------------------------------------------------------------------------- */

/* The slot a key starts probing at: splitmix64's finalizer, so that numbers differing in their
 * last digits spread over the whole table. */
static inline uint64_t
key_hash(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* Claim each keys[i] for rows[i] in `table`, an open-addressing table of 2^k slots shared by
 * processes (anonymous shared memory mapped before fork): slot i is the int64 pair (key, row) at
 * [2i] and [2i + 1] (key 0: empty), so that a probe touches one cache line. A key is taken by one compare-and-swap of its slot from 0, then its row is stored; the
 * positions returned are those whose key another row holds (the same row again keeps it). Every
 * access to a slot is atomic, so any number of processes may call this at once on one table. */
static PyObject *
claim_keys(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_Check(args[1]) || !PyList_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "claim_keys(table, keys: list[int], rows: list[int])");
        return NULL;
    }
    PyObject *keys = args[1], *rows = args[2];
    Py_ssize_t n = PyList_GET_SIZE(keys);
    if (PyList_GET_SIZE(rows) != n) {
        PyErr_SetString(PyExc_ValueError, "claim_keys(): keys and rows differ in length");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    uint64_t cap = (uint64_t)view.len / 16;
    if (cap == 0 || (cap & (cap - 1)) != 0 || (uint64_t)view.len != cap * 16 ||
        ((uintptr_t)view.buf & 7) != 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "claim_keys(): the table must be 16 * 2^k bytes, 8-aligned");
        return NULL;
    }
    int64_t *slots = (int64_t *)view.buf;
    uint64_t mask = cap - 1;
    PyObject *lost = NULL;
    /* First every key's and row's value and home slot, then the probes, each slot fetched a few
     * keys ahead (the table is far larger than the caches: one miss a key otherwise). */
    int64_t *vals = PyMem_Malloc((size_t)(n ? n : 1) * 2 * sizeof(int64_t));
    uint64_t *home = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(uint64_t));
    if (vals == NULL || home == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long long key = PyLong_AsLongLong(PyList_GET_ITEM(keys, i));
        if (key == -1 && PyErr_Occurred())
            goto fail;
        long long row = PyLong_AsLongLong(PyList_GET_ITEM(rows, i));
        if (row == -1 && PyErr_Occurred())
            goto fail;
        if (key <= 0) {
            PyErr_SetString(PyExc_ValueError, "claim_keys(): a key must be positive");
            goto fail;
        }
        vals[2 * i] = key;
        vals[2 * i + 1] = row;
        home[i] = key_hash((uint64_t)key) & mask;
    }
    lost = PyList_New(0);
    if (lost == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i + 8 < n)
            __builtin_prefetch(&slots[2 * home[i + 8]], 1, 0);
        int64_t key = vals[2 * i], row = vals[2 * i + 1];
        uint64_t at = home[i];
        int64_t holder = 0;
        uint64_t probes = 0;
        for (;;) {
            int64_t seen = __atomic_load_n(&slots[2 * at], __ATOMIC_ACQUIRE);
            if (seen == 0) {
                int64_t expected = 0;
                if (__atomic_compare_exchange_n(&slots[2 * at], &expected, key, 0, __ATOMIC_ACQ_REL,
                                                __ATOMIC_ACQUIRE)) {
                    __atomic_store_n(&slots[2 * at + 1], row, __ATOMIC_RELEASE);
                    holder = row;
                    break;
                }
                seen = expected; /* another process took this slot meanwhile: for which key? */
            }
            if (seen == key) {
                /* held: by this row (stored before this process could ask again) or another; a
                 * row not stored yet (0) is another process's claim in progress */
                holder = __atomic_load_n(&slots[2 * at + 1], __ATOMIC_ACQUIRE);
                break;
            }
            if (++probes >= cap) {
                PyErr_SetString(PyExc_OverflowError, "claim_keys(): the table is full");
                goto fail;
            }
            at = (at + 1) & mask;
        }
        if (holder != row && append_index(lost, i) < 0)
            goto fail;
    }
    PyMem_Free(vals);
    PyMem_Free(home);
    PyBuffer_Release(&view);
    return lost;
fail:
    PyMem_Free(vals);
    PyMem_Free(home);
    PyBuffer_Release(&view);
    Py_XDECREF(lost);
    return NULL;
}

/* ---- group_order -------------------------------------------------------------------------- */

#define MAX_GROUPS 32

/* The positions of `carriers` grouped by carrier (carriers in sorted order, positions ascending
 * within each) and the (carrier, count) of each group: a counting sort, as
 * sorted(range(n), key=carriers.__getitem__) orders them. None past MAX_GROUPS distinct values. */
static PyObject *
group_order(PyObject *Py_UNUSED(module), PyObject *carriers)
{
    if (!is_list(carriers, "group_order"))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(carriers);
    PyObject *names[MAX_GROUPS];
    Py_ssize_t counts[MAX_GROUPS], offsets[MAX_GROUPS];
    int ngroups = 0;
    unsigned char *group = PyMem_Malloc(n ? (size_t)n : 1);
    if (group == NULL)
        return PyErr_NoMemory();
    PyObject *order = NULL, *groups = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *c = PyList_GET_ITEM(carriers, i);
        if (!PyUnicode_Check(c)) {
            PyErr_SetString(PyExc_TypeError, "group_order() takes a list of str");
            goto fail;
        }
        int g = 0;
        for (; g < ngroups; g++) {
            if (names[g] == c)
                break;
            int eq = PyUnicode_Compare(names[g], c);
            if (eq == -1 && PyErr_Occurred())
                goto fail;
            if (eq == 0)
                break;
        }
        if (g == ngroups) {
            if (ngroups == MAX_GROUPS) {
                PyMem_Free(group);
                Py_RETURN_NONE;
            }
            names[ngroups] = c; /* borrowed: the list holds it */
            counts[ngroups++] = 0;
        }
        counts[g]++;
        group[i] = (unsigned char)g;
    }
    /* Sort the few distinct names (insertion sort), carrying their counts; remap group ids. */
    int by_rank[MAX_GROUPS];
    for (int g = 0; g < ngroups; g++)
        by_rank[g] = g;
    for (int a = 1; a < ngroups; a++) {
        int x = by_rank[a], b = a - 1;
        while (b >= 0 && PyUnicode_Compare(names[by_rank[b]], names[x]) > 0) {
            by_rank[b + 1] = by_rank[b];
            b--;
        }
        by_rank[b + 1] = x;
    }
    if (PyErr_Occurred())
        goto fail;
    groups = PyList_New(ngroups);
    if (groups == NULL)
        goto fail;
    Py_ssize_t at = 0;
    for (int r = 0; r < ngroups; r++) {
        int g = by_rank[r];
        offsets[g] = at;
        at += counts[g];
        PyObject *item = Py_BuildValue("(On)", names[g], counts[g]);
        if (item == NULL)
            goto fail;
        PyList_SET_ITEM(groups, r, item);
    }
    order = PyList_New(n);
    if (order == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *index = PyLong_FromSsize_t(i);
        if (index == NULL)
            goto fail;
        PyList_SET_ITEM(order, offsets[group[i]]++, index);
    }
    PyMem_Free(group);
    PyObject *result = PyTuple_Pack(2, order, groups);
    Py_DECREF(order);
    Py_DECREF(groups);
    return result;
fail:
    PyMem_Free(group);
    Py_XDECREF(order);
    Py_XDECREF(groups);
    return NULL;
}

/* ---- text_lengths ------------------------------------------------------------------------- */

/* len() of each text, and whether every character of every text is in the Basic Multilingual
 * Plane (so a text's UTF-16 length is its len()): a str's storage kind says so, no scan needed. */
static PyObject *
text_lengths(PyObject *Py_UNUSED(module), PyObject *texts)
{
    if (!is_list(texts, "text_lengths"))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(texts);
    PyObject *lengths = PyList_New(n);
    if (lengths == NULL)
        return NULL;
    int bmp = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(texts, i);
        if (!PyUnicode_Check(t)) {
            Py_DECREF(lengths);
            PyErr_SetString(PyExc_TypeError, "text_lengths() takes a list of str");
            return NULL;
        }
        if (PyUnicode_KIND(t) == PyUnicode_4BYTE_KIND)
            bmp = 0;
        PyObject *len = PyLong_FromSsize_t(PyUnicode_GET_LENGTH(t));
        if (len == NULL) {
            Py_DECREF(lengths);
            return NULL;
        }
        PyList_SET_ITEM(lengths, i, len);
    }
    return Py_BuildValue("(NO)", lengths, bmp ? Py_True : Py_False);
}

/* ---- module ------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"project_block", (PyCFunction)(void (*)(void))project_block, METH_FASTCALL,
     "project_block(block, delimiter, ncols, positions) -> list[tuple[str, ...]] | None"},
    {"phone_keys", phone_keys, METH_O, "phone_keys(numbers) -> (keys, odd)"},
    {"first_seen", (PyCFunction)(void (*)(void))first_seen, METH_FASTCALL,
     "first_seen(seen, keys) -> positions of the keys already seen"},
    {"claim_keys", (PyCFunction)(void (*)(void))claim_keys, METH_FASTCALL,
     "claim_keys(table, keys, rows) -> positions whose key another row holds"},
    {"group_order", group_order, METH_O, "group_order(carriers) -> (order, [(carrier, count)]) | None"},
    {"text_lengths", text_lengths, METH_O, "text_lengths(texts) -> (lengths, all_bmp)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "engine._speedups",
    .m_doc = "The compiled batch kernels of the hot path (see engine.speedups).",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
