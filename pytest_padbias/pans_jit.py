"""numba for the PAN census's compiled kernels, when installed: the decorator they use and
a prefetch hint. Without numba (or with ``PADBIAS_NO_NUMBA=1``) the decorators return the
plain functions, which are never called then (:func:`pytest_padbias.pans_compiled.available`)."""
from __future__ import annotations

import os

try:  # which branch runs depends on the environment
    if os.environ.get("PADBIAS_NO_NUMBA"):
        raise ImportError("PADBIAS_NO_NUMBA is set")
    import numba
except ImportError:
    numba = None


def njit(fn):
    """numba.njit (no GIL, cached on disk), or the plain function where numba is missing."""
    return fn if numba is None else numba.njit(nogil=True, cache=True)(fn)


def njit_exact_fastmath(fn):
    """numba.njit with fastmath, for loops whose every operand and result is an integer
    below 2**53 in float64: reordered or fused, each operation is still exact, and maxima
    then vectorise (without it they stayed scalar: a tenth of the kernel on 56x56 maps)."""
    return fn if numba is None else numba.njit(nogil=True, cache=True, fastmath=True)(fn)


def prefetch(array, index):
    """Where numba is missing: nothing (the kernels are not called then)."""


if numba is not None:
    from llvmlite import ir as _ir
    from numba.core import cgutils as _cgutils
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def prefetch(typingctx, array, index):  # (replaces the fallback above)
        """A hint to fetch the cache line of array[index] (llvm.prefetch: read, keep in all levels)."""
        def codegen(context, builder, signature, args):
            arr = context.make_array(signature.args[0])(context, builder, args[0])
            ptr = _cgutils.get_item_pointer(context, builder, signature.args[0], arr, [args[1]], wraparound=False)
            i8p, i32 = _ir.IntType(8).as_pointer(), _ir.IntType(32)
            fn = builder.module.declare_intrinsic("llvm.prefetch", fnty=_ir.FunctionType(_ir.VoidType(), [i8p, i32, i32, i32]))
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
            return context.get_dummy_value()
        return _types.void(array, index), codegen
