using System.Diagnostics.CodeAnalysis;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using PruneKernel.Vision;
using TorchSharp;

namespace PruneKernel;

/// <summary>
/// Keeps encoded image features (vision tower + projector output) between requests, so a multi-turn chat that sends the
/// same image again does not encode it again. Keys already include the model, dtype and device. The cache owns the
/// tensors it is given and must dispose them when it evicts them.
/// </summary>
public interface IImageFeatureCache
{
    /// <summary>Looks up features; the returned tensor stays owned by the cache.</summary>
    bool TryGet(string key, [NotNullWhen(true)] out torch.Tensor? features);

    /// <summary>Stores features of <paramref name="sizeBytes"/> bytes; the cache takes ownership.</summary>
    void Set(string key, torch.Tensor features, long sizeBytes);
}

/// <summary>Content keys for image features.</summary>
internal static class ImageFeatureKeys
{
    /// <summary>SHA-256 of the preprocessed pixels (what the vision tower sees), qualified by model, dtype and device.</summary>
    public static string For(string modelIdentity, PixelValues pixels)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(MemoryMarshal.AsBytes(pixels.Data.AsSpan()));
        if (pixels.HighRes is { } high)
        {
            // DeepSeek-VL hybrid encodes both resolutions; the low one alone does not pin the high one down.
            sha.AppendData(MemoryMarshal.AsBytes(high.Data.AsSpan()));
        }

        var hash = sha.GetHashAndReset();
        // Tiles and original size are part of the key: LLaVA-NeXT's packing depends on them, not only on the pixels.
        return $"{modelIdentity}|{(pixels.IsVideo ? "video" : "image")}|{pixels.Tiles}x{pixels.Channels}x{pixels.Height}x{pixels.Width}|{pixels.OriginalSize}|{Convert.ToHexString(hash)}";
    }
}
