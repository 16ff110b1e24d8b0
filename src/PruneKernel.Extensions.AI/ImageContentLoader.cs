using Microsoft.Extensions.AI;
using PruneKernel.Runtime;
using PruneKernel.Vision;

namespace PruneKernel.Extensions.AI;

/// <summary>
/// Turns DataContent and UriContent into decoded images, with media-type checks, one byte limit for every source, the
/// decoder's pixel limits, a folder allow-list for files, and a time limit for downloads.
/// </summary>
internal sealed class ImageContentLoader(LvlmChatClientOptions options, HttpClient? httpClient)
{
    // Chats resend their images every turn: the last few decoded images are kept by the SHA-256 of their bytes, so a
    // resent image is neither decoded nor (the model remembers preprocessing per decoded image) resized again.
    private const int RecentImages = 8;
    private const long MaxRecentPixels = 32L << 20; // all kept images together: 96 MiB of RGB at most
    private readonly LinkedList<(string Key, RgbImage Image)> _recent = new();
    private long _recentPixels;

    public async Task<RgbImage> LoadAsync(AIContent content, CancellationToken cancellationToken)
    {
        switch (content)
        {
            case DataContent data:
                var name = data.Name ?? "data content";
                if (data.Data.Length > options.MaxImageBytes)
                {
                    throw new UnsupportedContentException($"{name}: {data.Data.Length} bytes, over the {options.MaxImageBytes}-byte image limit (MaxImageBytes).");
                }

                CheckImageMediaType(data.MediaType, data.Data.Span, name);
                return Decode(data.Data, name);
            case UriContent uri when uri.Uri.IsFile:
                return Decode(await ReadFileAsync(uri.Uri, cancellationToken).ConfigureAwait(false), uri.Uri.LocalPath);
            case UriContent uri when uri.Uri.Scheme is "http" or "https":
                return Decode(await DownloadAsync(uri.Uri, cancellationToken).ConfigureAwait(false), uri.Uri.ToString());
            case UriContent uri:
                throw new UnsupportedContentException($"Image URI scheme '{uri.Uri.Scheme}' is not supported (file, or http(s) when allowed).");
            default:
                throw new UnsupportedContentException($"Content of type {content.GetType().Name} is not an image.");
        }
    }

    private ImageLimits Limits => ImageLimits.Default with
    {
        MaxBytes = options.MaxImageBytes,
        MaxPixels = options.MaxImagePixels,
        MaxSourcePixels = Math.Max(ImageLimits.Default.MaxSourcePixels, options.MaxImagePixels),
        AllowTruncated = options.AllowTruncatedImages,
    };

    private static void CheckImageMediaType(string mediaType, ReadOnlySpan<byte> bytes, string name)
    {
        // Trust the bytes over a generic declared type, but refuse content declared as something other than an image.
        if (!mediaType.StartsWith("image/", StringComparison.OrdinalIgnoreCase) && mediaType != "application/octet-stream")
        {
            throw new UnsupportedContentException($"{name}: media type '{mediaType}' is not supported (images only).");
        }

        if (ImageDecoder.SniffMediaType(bytes) is null)
        {
            throw new UnsupportedContentException($"{name}: the bytes are not a PNG, JPEG, WebP, GIF or BMP image (declared '{mediaType}').");
        }
    }

    private RgbImage Decode(ReadOnlyMemory<byte> bytes, string name)
    {
        ImageLimits limits;
        try
        {
            limits = Limits;
            limits.Validate();
        }
        catch (ArgumentOutOfRangeException e)
        {
            throw new UnsupportedContentException($"LvlmChatClientOptions image limits are invalid: {e.Message}", e);
        }

        // The limits and the name are part of the key: options may change between requests, and an image must not come
        // back under another source's name (a file path, say) in later error messages.
        var key = $"{Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(bytes.Span))}|{name}|{limits}";
        lock (_recent)
        {
            for (var node = _recent.First; node is not null; node = node.Next)
            {
                if (node.Value.Key == key)
                {
                    _recent.Remove(node);
                    _recent.AddFirst(node);
                    return node.Value.Image;
                }
            }
        }

        RgbImage image;
        try
        {
            image = ImageDecoder.Decode(bytes.Span, name, limits);
        }
        catch (ImageDecodeException e)
        {
            throw new UnsupportedContentException(e.Message, e);
        }

        var pixels = (long)image.Width * image.Height;
        if (pixels <= MaxRecentPixels)
        {
            lock (_recent)
            {
                _recent.AddFirst((key, image));
                _recentPixels += pixels;
                while (_recent.Count > RecentImages || _recentPixels > MaxRecentPixels)
                {
                    var last = _recent.Last!.Value.Image;
                    _recentPixels -= (long)last.Width * last.Height;
                    _recent.RemoveLast();
                }
            }
        }

        return image;
    }

    /// <summary>
    /// Reads a file URI's image if, and only if, it is a regular file whose real path lies under an allowed folder. Every
    /// way of failing that (outside the folders, missing, unreadable, a device or FIFO, a link leading out) gives the same
    /// message, so a caller learns nothing about files it may not read.
    /// </summary>
    private async Task<byte[]> ReadFileAsync(Uri uri, CancellationToken cancellationToken)
    {
        var folders = options.AllowedImageFolders;
        var refusal = $"{uri}: file images are read only from the folders in LvlmChatClientOptions.AllowedImageFolders "
            + $"({(folders.Count == 0 ? "none is configured" : "this is not a readable regular file under one of them")}).";
        // file://server/share/... would be a network path.
        if (folders.Count == 0 || !(uri.IsLoopback || string.IsNullOrEmpty(uri.Host)))
        {
            throw new UnsupportedContentException(refusal);
        }

        string path;
        List<string> canonical;
        try
        {
            // GetFullPath folds "." and ".." without touching the disk; a path outside every folder is refused before any file is opened.
            path = Path.GetFullPath(uri.LocalPath);
            var lexical = folders.Where(f => !string.IsNullOrWhiteSpace(f)).Select(Path.GetFullPath).ToList();
            if (!lexical.Any(f => IsUnder(path, f)))
            {
                throw new UnsupportedContentException(refusal);
            }

            canonical = [.. lexical.Select(BoundedFile.CanonicalFolder).OfType<string>()];
        }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException or IOException or UnauthorizedAccessException)
        {
            throw new UnsupportedContentException(refusal);
        }

        FileStream stream;
        try
        {
            string real;
            (stream, real) = BoundedFile.OpenRegular(path, long.MaxValue);
            // The descriptor's own path: a link inside an allowed folder that leads out is caught here, after the open, race-free.
            if (!canonical.Any(f => IsUnder(real, f)))
            {
                stream.Dispose();
                throw new UnsupportedContentException(refusal);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new UnsupportedContentException(refusal);
        }

        using (stream)
        {
            if (stream.Length > options.MaxImageBytes)
            {
                throw new UnsupportedContentException($"{uri}: over the {options.MaxImageBytes}-byte image limit (MaxImageBytes).");
            }

            try
            {
                return await BoundedFile.ReadToEndAsync(stream, uri.ToString(), options.MaxImageBytes, cancellationToken).ConfigureAwait(false);
            }
            catch (IOException e)
            {
                throw new UnsupportedContentException($"{uri}: cannot read the image ({e.Message}).", e);
            }
        }
    }

    private static bool IsUnder(string path, string folder)
    {
        var comparison = OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;
        var prefix = Path.EndsInDirectorySeparator(folder) ? folder : folder + Path.DirectorySeparatorChar;
        return path.StartsWith(prefix, comparison);
    }

    private async Task<byte[]> DownloadAsync(Uri uri, CancellationToken cancellationToken)
    {
        if (!options.AllowRemoteImages)
        {
            throw new UnsupportedContentException($"{uri}: remote images are disabled (set LvlmChatClientOptions.AllowRemoteImages).");
        }

        if (httpClient is null)
        {
            throw new UnsupportedContentException($"{uri}: remote images need an HttpClient given to the chat client.");
        }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(options.RemoteImageTimeout);
        try
        {
            using var response = await httpClient.GetAsync(uri, HttpCompletionOption.ResponseHeadersRead, timeout.Token).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                throw new UnsupportedContentException($"{uri}: download failed with HTTP {(int)response.StatusCode}.");
            }

            if (response.Content.Headers.ContentLength > options.MaxImageBytes)
            {
                throw new UnsupportedContentException($"{uri}: {response.Content.Headers.ContentLength} bytes exceed the {options.MaxImageBytes}-byte image limit.");
            }

            await using var stream = await response.Content.ReadAsStreamAsync(timeout.Token).ConfigureAwait(false);
            using var buffer = new MemoryStream();
            var chunk = new byte[81920];
            int read;
            while ((read = await stream.ReadAsync(chunk, timeout.Token).ConfigureAwait(false)) > 0)
            {
                if (buffer.Length + read > options.MaxImageBytes)
                {
                    throw new UnsupportedContentException($"{uri}: the download exceeds the {options.MaxImageBytes}-byte image limit.");
                }

                buffer.Write(chunk, 0, read);
            }

            return buffer.ToArray();
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new UnsupportedContentException($"{uri}: the download took longer than {options.RemoteImageTimeout}.");
        }
        catch (HttpRequestException e)
        {
            throw new UnsupportedContentException($"{uri}: download failed ({e.Message}).", e);
        }
    }
}
