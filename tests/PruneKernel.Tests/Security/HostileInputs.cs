using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.InteropServices;
using SkiaSharp;

namespace PruneKernel.Tests.Security;

/// <summary>Builders of small valid images and of their hostile variants (headers that lie about the size, cut files).</summary>
internal static partial class HostileInputs
{
    private static readonly uint[] CrcTable = BuildCrcTable();

    /// <summary>A small image with a pattern (so codecs cannot compress it to nothing), encoded by SkiaSharp.</summary>
    public static byte[] Encode(int width, int height, SKEncodedImageFormat format, int quality = 90, bool alpha = false)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(width, height, SKColorType.Rgba8888, alpha ? SKAlphaType.Unpremul : SKAlphaType.Opaque));
        for (var y = 0; y < height; y++)
        {
            for (var x = 0; x < width; x++)
            {
                bitmap.SetPixel(x, y, new SKColor((byte)(x * 7), (byte)(y * 13), (byte)((x ^ y) * 3), alpha ? (byte)(x * 5) : (byte)255));
            }
        }

        using var image = SKImage.FromBitmap(bitmap);
        using var data = image.Encode(format, quality);
        return data.ToArray();
    }

    public static byte[] Png(int width, int height) => Encode(width, height, SKEncodedImageFormat.Png);

    public static byte[] Jpeg(int width, int height) => Encode(width, height, SKEncodedImageFormat.Jpeg);

    public static byte[] Webp(int width, int height) => Encode(width, height, SKEncodedImageFormat.Webp);

    /// <summary>The PNG with its IHDR claiming another size, CRC fixed so only the size is a lie.</summary>
    public static byte[] WithPngSize(byte[] png, uint width, uint height)
    {
        var bytes = png.ToArray();
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(16), width);
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(20), height);
        FixPngCrc(bytes, 8);
        return bytes;
    }

    /// <summary>Recomputes the CRC of the PNG chunk whose length field starts at <paramref name="at"/>.</summary>
    public static void FixPngCrc(byte[] bytes, int at)
    {
        var length = (int)BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(at));
        if (length < 0 || at + 12 + length > bytes.Length)
        {
            return;
        }

        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(at + 8 + length), Crc32(bytes.AsSpan(at + 4, 4 + length)));
    }

    /// <summary>The JPEG with its start-of-frame claiming another size.</summary>
    public static byte[] WithJpegSize(byte[] jpeg, ushort width, ushort height)
    {
        var bytes = jpeg.ToArray();
        var sof = FindSof(bytes);
        BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan(sof + 5), height);
        BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan(sof + 7), width);
        return bytes;
    }

    public static int FindSof(byte[] jpeg)
    {
        for (var i = 2; i + 9 < jpeg.Length; i++)
        {
            if (jpeg[i] == 0xFF && jpeg[i + 1] is 0xC0 or 0xC1 or 0xC2)
            {
                return i;
            }
        }

        throw new InvalidOperationException("no SOF marker");
    }

    /// <summary>A GIF of the given size with one colour per pixel, LZW-coded with a clear code every few symbols.</summary>
    public static byte[] Gif(int width, int height)
    {
        var output = new List<byte>();
        output.AddRange("GIF89a"u8.ToArray());
        output.AddRange([(byte)width, (byte)(width >> 8), (byte)height, (byte)(height >> 8), 0xF1, 0, 0]);
        // Global colour table of 4 entries.
        output.AddRange([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]);
        output.AddRange([0x2C, 0, 0, 0, 0, (byte)width, (byte)(width >> 8), (byte)height, (byte)(height >> 8), 0]);
        const int minCodeSize = 2;
        output.Add(minCodeSize);
        // 3-bit codes: clear = 4, end = 5; emit a clear before the code table would grow, so every code stays 3 bits.
        var bits = new List<bool>();
        void Emit(int code)
        {
            for (var b = 0; b < 3; b++)
            {
                bits.Add(((code >> b) & 1) == 1);
            }
        }

        Emit(4);
        var sinceClear = 0;
        for (var i = 0; i < width * height; i++)
        {
            if (sinceClear == 2)
            {
                Emit(4);
                sinceClear = 0;
            }

            Emit((i + (i / width)) % 4);
            sinceClear++;
        }

        Emit(5);
        var data = new byte[(bits.Count + 7) / 8];
        for (var i = 0; i < bits.Count; i++)
        {
            if (bits[i])
            {
                data[i / 8] |= (byte)(1 << (i % 8));
            }
        }

        for (var i = 0; i < data.Length; i += 255)
        {
            var n = Math.Min(255, data.Length - i);
            output.Add((byte)n);
            output.AddRange(data.AsSpan(i, n).ToArray());
        }

        output.Add(0);
        output.Add(0x3B);
        return [.. output];
    }

    public static uint Crc32(ReadOnlySpan<byte> data)
    {
        var crc = 0xFFFFFFFFu;
        foreach (var b in data)
        {
            crc = CrcTable[(crc ^ b) & 0xFF] ^ (crc >> 8);
        }

        return crc ^ 0xFFFFFFFFu;
    }

    private static uint[] BuildCrcTable()
    {
        var table = new uint[256];
        for (var n = 0u; n < 256; n++)
        {
            var c = n;
            for (var k = 0; k < 8; k++)
            {
                c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            }

            table[n] = c;
        }

        return table;
    }

    /// <summary>Creates a FIFO (named pipe) at <paramref name="path"/>.</summary>
    public static void MakeFifo(string path)
    {
        if (mkfifo(path, Convert.ToUInt32("644", 8)) != 0)
        {
            throw new IOException($"mkfifo {path} failed: {Marshal.GetLastPInvokeError()}");
        }
    }

    /// <summary>Runs <paramref name="action"/> on another thread and fails the test if it has not finished in time (a hang).</summary>
    public static T Within<T>(TimeSpan limit, Func<T> action)
    {
        var task = Task.Factory.StartNew(action, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        if (!task.Wait(limit))
        {
            Assert.Fail($"did not finish within {limit.TotalSeconds} s (blocked)");
        }

        return task.GetAwaiter().GetResult();
    }

    /// <summary>Runs <paramref name="action"/>, expecting <typeparamref name="TException"/>, within a time limit.</summary>
    public static TException ThrowsWithin<TException>(TimeSpan limit, Action action)
        where TException : Exception =>
        Within(limit, () => Assert.Throws<TException>(action));

    /// <summary>Managed bytes this thread allocated while running <paramref name="action"/>.</summary>
    public static long AllocatedBy(Action action)
    {
        var before = GC.GetAllocatedBytesForCurrentThread();
        action();
        return GC.GetAllocatedBytesForCurrentThread() - before;
    }

    /// <summary>Peak resident set size of this process so far (VmHWM), in bytes; <see cref="ResetPeakRss"/> restarts it.</summary>
    public static long PeakRss() => ReadStatus("VmHWM:");

    /// <summary>Resident set size now (VmRSS), in bytes.</summary>
    public static long Rss() => ReadStatus("VmRSS:");

    /// <summary>Anonymous resident memory (RssAnon: heaps, not mapped files), in bytes.</summary>
    public static long RssAnon() => ReadStatus("RssAnon:");

    /// <summary>Resets VmHWM to the current RSS (Linux: writing 5 to /proc/self/clear_refs); false where unsupported.</summary>
    public static bool ResetPeakRss()
    {
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static long ReadStatus(string key)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith(key, StringComparison.Ordinal))
            {
                return long.Parse(line[key.Length..].Trim().Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture) * 1024;
            }
        }

        return 0;
    }

    /// <summary>A measurement line: a diagnostic message, and appended to $PRUNEKERNEL_TEST_REPORT when that names a file.</summary>
    public static void Report(string line)
    {
        TestContext.Current.SendDiagnosticMessage(line);
        if (Environment.GetEnvironmentVariable("PRUNEKERNEL_TEST_REPORT") is { Length: > 0 } path)
        {
            lock (CrcTable)
            {
                File.AppendAllText(path, line + Environment.NewLine);
            }
        }
    }

    public static TimeSpan Time(Action action)
    {
        var watch = Stopwatch.StartNew();
        action();
        return watch.Elapsed;
    }

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int mkfifo(string path, uint mode);
}
