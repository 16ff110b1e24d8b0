namespace PruneKernel.Checkpoints;

/// <summary>One tensor's entry in a safetensors header, already validated against the file.</summary>
/// <param name="Name">The tensor's key in the header.</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Dimensions; empty for a scalar.</param>
/// <param name="DataBegin">Absolute file offset of the first data byte.</param>
/// <param name="DataEnd">Absolute file offset one past the last data byte.</param>
public sealed record SafetensorsTensorInfo(string Name, SafetensorsDType DType, IReadOnlyList<long> Shape, long DataBegin, long DataEnd)
{
    /// <summary>Bytes of data: <see cref="DataEnd"/> minus <see cref="DataBegin"/>.</summary>
    public long ByteLength => DataEnd - DataBegin;

    /// <summary>Number of elements: the product of <see cref="Shape"/> (1 for a scalar).</summary>
    public long ElementCount => ByteLength / DType.ElementSize();
}
