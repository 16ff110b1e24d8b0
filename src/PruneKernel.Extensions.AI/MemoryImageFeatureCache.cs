using System.Diagnostics.CodeAnalysis;
using Microsoft.Extensions.Caching.Memory;
using TorchSharp;

namespace PruneKernel.Extensions.AI;

/// <summary>
/// <see cref="IImageFeatureCache"/> on Microsoft.Extensions.Caching.Memory, limited in bytes; evicted feature tensors are
/// disposed (freeing GPU memory).
/// </summary>
public sealed class MemoryImageFeatureCache : IImageFeatureCache, IDisposable
{
    private readonly MemoryCache _cache;
    private long _hits;
    private long _misses;

    /// <summary>Creates a cache holding at most <paramref name="sizeLimitBytes"/> bytes of features.</summary>
    public MemoryImageFeatureCache(long sizeLimitBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(sizeLimitBytes);
        _cache = new MemoryCache(new MemoryCacheOptions { SizeLimit = sizeLimitBytes });
    }

    /// <summary>Lookups answered from the cache.</summary>
    public long Hits => Interlocked.Read(ref _hits);

    /// <summary>Lookups that had to encode.</summary>
    public long Misses => Interlocked.Read(ref _misses);

    /// <inheritdoc />
    public bool TryGet(string key, [NotNullWhen(true)] out torch.Tensor? features)
    {
        if (_cache.TryGetValue(key, out torch.Tensor? found) && found is not null)
        {
            Interlocked.Increment(ref _hits);
            LvlmTelemetry.CacheHits.Add(1);
            features = found;
            return true;
        }

        Interlocked.Increment(ref _misses);
        LvlmTelemetry.CacheMisses.Add(1);
        features = null;
        return false;
    }

    /// <inheritdoc />
    public void Set(string key, torch.Tensor features, long sizeBytes)
    {
        var entry = new MemoryCacheEntryOptions { Size = Math.Max(1, sizeBytes) };
        entry.RegisterPostEvictionCallback(static (_, value, _, _) => (value as torch.Tensor)?.Dispose());
        _cache.Set(key, features, entry);
    }

    /// <summary>Drops every entry and disposes their tensors.</summary>
    public void Dispose()
    {
        _cache.Compact(1.0);
        _cache.Dispose();
    }
}
