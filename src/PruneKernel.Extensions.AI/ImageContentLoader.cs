using Microsoft.Extensions.AI;
using PruneKernel.Vision;

namespace PruneKernel.Extensions.AI;

/// <summary>Turns DataContent and UriContent into decoded images, with media-type checks and size and time limits.</summary>
internal sealed class ImageContentLoader(LvlmChatClientOptions options, HttpClient? httpClient)
{
    public async Task<RgbImage> LoadAsync(AIContent content, CancellationToken cancellationToken)
    {
        switch (content)
        {
            case DataContent data:
                CheckImageMediaType(data.MediaType, data.Data.Span, data.Name ?? "data content");
                return Decode(data.Data, data.Name ?? "data content");
            case UriContent uri when uri.Uri.IsFile:
                return Decode(await ReadFileAsync(uri.Uri.LocalPath, cancellationToken).ConfigureAwait(false), uri.Uri.LocalPath);
            case UriContent uri when uri.Uri.Scheme is "http" or "https":
                return Decode(await DownloadAsync(uri.Uri, cancellationToken).ConfigureAwait(false), uri.Uri.ToString());
            case UriContent uri:
                throw new UnsupportedContentException($"Image URI scheme '{uri.Uri.Scheme}' is not supported (file, or http(s) when allowed).");
            default:
                throw new UnsupportedContentException($"Content of type {content.GetType().Name} is not an image.");
        }
    }

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

    private static RgbImage Decode(ReadOnlyMemory<byte> bytes, string name)
    {
        try
        {
            return ImageDecoder.Decode(bytes.Span, name);
        }
        catch (ImageDecodeException e)
        {
            throw new UnsupportedContentException(e.Message, e);
        }
    }

    private async Task<byte[]> ReadFileAsync(string path, CancellationToken cancellationToken)
    {
        var info = new FileInfo(path);
        if (!info.Exists)
        {
            throw new UnsupportedContentException($"{path}: image file not found.");
        }

        if (info.Length > options.MaxImageBytes)
        {
            throw new UnsupportedContentException($"{path}: {info.Length} bytes exceed the {options.MaxImageBytes}-byte image limit.");
        }

        return await File.ReadAllBytesAsync(path, cancellationToken).ConfigureAwait(false);
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
