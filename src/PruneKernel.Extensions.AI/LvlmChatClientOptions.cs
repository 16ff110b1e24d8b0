namespace PruneKernel.Extensions.AI;

/// <summary>Settings of <see cref="LvlmChatClient"/> and of its DI registration (bindable from configuration).</summary>
public sealed class LvlmChatClientOptions
{
    /// <summary>Model folder (Hugging Face format). Required when the client is created through DI.</summary>
    public string? ModelPath { get; set; }

    /// <summary>"cpu", "cuda" or "cuda:N".</summary>
    public string Device { get; set; } = "cpu";

    /// <summary>"f32", "bf16" or "f16"; null picks the runtime's default for the device.</summary>
    public string? DType { get; set; }

    /// <summary>Verify while loading that every weight is finite (<see cref="LvlmLoadOptions.CheckWeights"/>; about 12 % more load time).</summary>
    public bool CheckWeights { get; set; }

    /// <summary>Model id reported in responses; default: the folder name.</summary>
    public string? ModelId { get; set; }

    /// <summary>Output budget when a request sets none.</summary>
    public int DefaultMaxOutputTokens { get; set; } = 256;

    /// <summary>Fetch http(s) image URIs (off by default: a request could otherwise make the host download anything).</summary>
    public bool AllowRemoteImages { get; set; }

    /// <summary>Largest encoded image accepted from any source (DataContent, file, download), in bytes.</summary>
    public long MaxImageBytes { get; set; } = 20 * 1024 * 1024;

    /// <summary>
    /// Most pixels a decoded image may have (default 4096 x 4096, as <see cref="Vision.ImageLimits.MaxPixels"/>); larger JPEG,
    /// WebP and GIF images are decoded at reduced size, larger PNG and BMP images are refused.
    /// </summary>
    public long MaxImagePixels { get; set; } = Vision.ImageLimits.Default.MaxPixels;

    /// <summary>Accept truncated or corrupt PNG/JPEG data, decoding what is there (off: such images are refused).</summary>
    public bool AllowTruncatedImages { get; set; }

    /// <summary>
    /// Folders from which <c>file://</c> image URIs may be read (default: none, so every file URI is refused: a request
    /// comes from whoever can reach the client, and would otherwise make the host open any path it names). A file is read
    /// only if it is a regular file whose real path (symbolic links and <c>..</c> resolved) lies under one of them; every
    /// refusal reads the same, whether or not the file exists.
    /// </summary>
    public IList<string> AllowedImageFolders { get; set; } = [];

    /// <summary>Time limit of one remote image download.</summary>
    public TimeSpan RemoteImageTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Bytes of encoded image features kept between requests (0 disables the cache).</summary>
    public long ImageCacheBytes { get; set; } = 256L * 1024 * 1024;
}

/// <summary>A message part the local model cannot take (audio, unknown media types, undecodable images, ...).</summary>
public sealed class UnsupportedContentException : PruneKernelException
{
    /// <summary>Creates the exception.</summary>
    public UnsupportedContentException() { }

    /// <summary>Creates the exception with a message.</summary>
    public UnsupportedContentException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public UnsupportedContentException(string message, Exception innerException) : base(message, innerException) { }
}
