/*
 * Fast path of the FER2013 CSV parser (optional C extension; fer_csv.py has a numpy fallback).
 *
 * parse_rows(data, start, end, cols, images, labels, usage, out_row) parses whole lines of
 * data[start:end] into preallocated writable buffers and returns (rows_parsed, stop_offset):
 * stop_offset is end when every line was valid, else the offset of the first bad line, which the
 * Python side re-parses line by line to name the problem (or skip the row). The GIL is released,
 * so one thread per core parses its own chunk.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define PIXELS 2304
#define MAX_COLS 16

static int trim(const char **lo, const char **hi) {
    while (*lo < *hi && (**lo == ' ' || **lo == '\t')) (*lo)++;
    while (*hi > *lo && ((*hi)[-1] == ' ' || (*hi)[-1] == '\t')) (*hi)--;
    return *hi > *lo;
}

static int usage_code(const char *lo, const char *hi) {
    Py_ssize_t n = hi - lo;
    if (n == 8 && memcmp(lo, "Training", 8) == 0) return 0;
    if (n == 10 && memcmp(lo, "PublicTest", 10) == 0) return 1;
    if (n == 11 && memcmp(lo, "PrivateTest", 11) == 0) return 2;
    return -1;
}

/* Parse one line; returns 0 on success, -1 if anything is off. */
static int parse_line(const char *p, const char *end, const int *cols, int ncols,
                      unsigned char *img, unsigned char *label, signed char *use) {
    const char *field_lo[MAX_COLS], *field_hi[MAX_COLS];
    int f = 0;
    field_lo[0] = p;
    /* memchr finds the few commas of a 7 kB line with SIMD instead of a byte loop. */
    for (const char *q = memchr(p, ',', (size_t)(end - p)); q; q = memchr(q + 1, ',', (size_t)(end - q - 1))) {
        if (f + 1 >= ncols) return -1;
        field_hi[f] = q;
        field_lo[++f] = q + 1;
        if (q + 1 >= end) break;
    }
    field_hi[f] = end;
    if (f != ncols - 1) return -1;

    /* Label: digits, optionally ".0..." (pandas writes 3.0 for a column that once held NaN); 0-6. */
    const char *lo = field_lo[cols[0]], *hi = field_hi[cols[0]];
    if (!trim(&lo, &hi) || (unsigned)*lo - '0' > 9) return -1;
    unsigned value = 0;
    while (lo < hi && (unsigned)*lo - '0' <= 9) {
        value = value * 10 + (unsigned)(*lo++ - '0');
        if (value > 6) return -1;
    }
    if (lo < hi && *lo == '.') {
        lo++;
        while (lo < hi && *lo == '0') lo++;
    }
    if (lo != hi) return -1;
    *label = (unsigned char)value;

    lo = field_lo[cols[1]]; hi = field_hi[cols[1]];
    trim(&lo, &hi);
    int code = usage_code(lo, hi);
    if (code < 0) return -1;
    *use = (signed char)code;

    /* Pixels: 1-3 digit tokens separated by spaces, unrolled (no per-digit loop counter). */
    const unsigned char *s = (const unsigned char *)field_lo[cols[2]];
    const unsigned char *e = (const unsigned char *)field_hi[cols[2]];
    int count = 0;
    while (s < e) {
        unsigned v = (unsigned)*s - '0';
        if (v > 9) {
            if (*s == ' ') { s++; continue; }
            return -1;
        }
        s++;
        if (s < e && (unsigned)*s - '0' <= 9) {
            v = v * 10 + ((unsigned)*s++ - '0');
            if (s < e && (unsigned)*s - '0' <= 9) {
                v = v * 10 + ((unsigned)*s++ - '0');
                if (s < e && (unsigned)*s - '0' <= 9) return -1; /* 4+ digits */
            }
        }
        if (v > 255 || count >= PIXELS || (s < e && *s != ' ')) return -1;
        img[count++] = (unsigned char)v;
    }
    return count == PIXELS ? 0 : -1;
}

static PyObject *parse_rows(PyObject *self, PyObject *args) {
    Py_buffer data, images, labels, usage;
    Py_ssize_t start, end, out_row;
    int cols[3], ncols;
    if (!PyArg_ParseTuple(args, "y*nn(iii)iw*w*w*n", &data, &start, &end, &cols[0], &cols[1], &cols[2],
                          &ncols, &images, &labels, &usage, &out_row))
        return NULL;
    Py_ssize_t rows = 0, stop = end;
    Py_ssize_t capacity = labels.len;
    if (ncols < 3 || ncols > MAX_COLS || start < 0 || end > data.len || images.len < capacity * PIXELS) {
        PyBuffer_Release(&data); PyBuffer_Release(&images); PyBuffer_Release(&labels); PyBuffer_Release(&usage);
        PyErr_SetString(PyExc_ValueError, "parse_rows: bad arguments");
        return NULL;
    }
    const char *base = (const char *)data.buf;
    Py_BEGIN_ALLOW_THREADS
    const char *p = base + start, *limit = base + end;
    while (p < limit) {
        const char *nl = memchr(p, '\n', (size_t)(limit - p));
        const char *line_end = nl ? nl : limit;
        const char *e = line_end;
        if (e > p && e[-1] == '\r') e--;
        if (e > p) {
            Py_ssize_t row = out_row + rows;
            if (row >= capacity ||
                parse_line(p, e, cols, ncols, (unsigned char *)images.buf + row * PIXELS,
                           (unsigned char *)labels.buf + row, (signed char *)usage.buf + row) != 0) {
                stop = p - base;
                break;
            }
            rows++;
        }
        p = nl ? nl + 1 : limit;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data); PyBuffer_Release(&images); PyBuffer_Release(&labels); PyBuffer_Release(&usage);
    return Py_BuildValue("nn", rows, stop);
}

static PyMethodDef methods[] = {
    {"parse_rows", parse_rows, METH_VARARGS, "Parse FER2013 CSV lines into preallocated buffers."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastcsv", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastcsv(void) { return PyModule_Create(&module); }
