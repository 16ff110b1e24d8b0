using System.Collections.Frozen;
using TorchSharp;

namespace PruneKernel.Checkpoints;

/// <summary>Element types a safetensors file may declare that PruneKernel can load; names match the file format's spelling.</summary>
public enum SafetensorsDType
{
    /// <summary>64-bit IEEE float.</summary>
    F64,

    /// <summary>32-bit IEEE float.</summary>
    F32,

    /// <summary>16-bit IEEE float.</summary>
    F16,

    /// <summary>bfloat16: the upper half of a 32-bit float.</summary>
    BF16,

    /// <summary>64-bit signed integer.</summary>
    I64,

    /// <summary>32-bit signed integer.</summary>
    I32,

    /// <summary>16-bit signed integer.</summary>
    I16,

    /// <summary>8-bit signed integer.</summary>
    I8,

    /// <summary>8-bit unsigned integer.</summary>
    U8,

    /// <summary>Boolean stored as one byte, 0 or 1.</summary>
    BOOL,
}

/// <summary>Sizes and TorchSharp equivalents of <see cref="SafetensorsDType"/> values.</summary>
public static class SafetensorsDTypeExtensions
{
    // An explicit table rather than Enum.TryParse, which would also accept numbers and other casings.
    private static readonly FrozenDictionary<string, SafetensorsDType> ByName = new Dictionary<string, SafetensorsDType>(StringComparer.Ordinal)
    {
        ["F64"] = SafetensorsDType.F64,
        ["F32"] = SafetensorsDType.F32,
        ["F16"] = SafetensorsDType.F16,
        ["BF16"] = SafetensorsDType.BF16,
        ["I64"] = SafetensorsDType.I64,
        ["I32"] = SafetensorsDType.I32,
        ["I16"] = SafetensorsDType.I16,
        ["I8"] = SafetensorsDType.I8,
        ["U8"] = SafetensorsDType.U8,
        ["BOOL"] = SafetensorsDType.BOOL,
    }.ToFrozenDictionary(StringComparer.Ordinal);

    /// <summary>Bytes per element.</summary>
    public static int ElementSize(this SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.F64 or SafetensorsDType.I64 => 8,
        SafetensorsDType.F32 or SafetensorsDType.I32 => 4,
        SafetensorsDType.F16 or SafetensorsDType.BF16 or SafetensorsDType.I16 => 2,
        SafetensorsDType.I8 or SafetensorsDType.U8 or SafetensorsDType.BOOL => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "Not a safetensors dtype."),
    };

    /// <summary>The TorchSharp element type with the same bit layout.</summary>
    public static torch.ScalarType ToScalarType(this SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.F64 => torch.ScalarType.Float64,
        SafetensorsDType.F32 => torch.ScalarType.Float32,
        SafetensorsDType.F16 => torch.ScalarType.Float16,
        SafetensorsDType.BF16 => torch.ScalarType.BFloat16,
        SafetensorsDType.I64 => torch.ScalarType.Int64,
        SafetensorsDType.I32 => torch.ScalarType.Int32,
        SafetensorsDType.I16 => torch.ScalarType.Int16,
        SafetensorsDType.I8 => torch.ScalarType.Int8,
        SafetensorsDType.U8 => torch.ScalarType.Byte,
        SafetensorsDType.BOOL => torch.ScalarType.Bool,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "Not a safetensors dtype."),
    };

    internal static bool TryParse(string name, out SafetensorsDType dtype) => ByName.TryGetValue(name, out dtype);
}
