from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]

class TokenPrecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOKEN_PRECISION_UNSPECIFIED: _ClassVar[TokenPrecision]
    TOKEN_PRECISION_FLOAT32: _ClassVar[TokenPrecision]
    TOKEN_PRECISION_FLOAT16: _ClassVar[TokenPrecision]
    TOKEN_PRECISION_RESIDUAL_1BIT: _ClassVar[TokenPrecision]
    TOKEN_PRECISION_RESIDUAL_2BIT: _ClassVar[TokenPrecision]
    TOKEN_PRECISION_RESIDUAL_4BIT: _ClassVar[TokenPrecision]
    TOKEN_PRECISION_RESIDUAL_8BIT: _ClassVar[TokenPrecision]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
TOKEN_PRECISION_UNSPECIFIED: TokenPrecision
TOKEN_PRECISION_FLOAT32: TokenPrecision
TOKEN_PRECISION_FLOAT16: TokenPrecision
TOKEN_PRECISION_RESIDUAL_1BIT: TokenPrecision
TOKEN_PRECISION_RESIDUAL_2BIT: TokenPrecision
TOKEN_PRECISION_RESIDUAL_4BIT: TokenPrecision
TOKEN_PRECISION_RESIDUAL_8BIT: TokenPrecision

class Vectors(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...
