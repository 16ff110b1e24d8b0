namespace PruneKernel.Vision;

/// <summary>
/// Antialiased separable resize of interleaved RGB bytes, reproducing torch's uint8 CPU kernel behind
/// <c>torchvision.transforms.v2.functional.resize(..., antialias=True)</c>, which in turn follows Pillow's
/// <c>ImagingResample</c>: per-axis filter weights computed in double, normalised, quantised to 16-bit fixed point,
/// width pass first, each pass rounded and clamped back to bytes.
/// </summary>
internal static class AntialiasResampler
{
    /// <summary>Resizes <paramref name="src"/> (<paramref name="width"/> x <paramref name="height"/> RGB) to the output size.</summary>
    /// <param name="src">Interleaved RGB.</param>
    /// <param name="width">Input width.</param>
    /// <param name="height">Input height.</param>
    /// <param name="outWidth">Output width.</param>
    /// <param name="outHeight">Output height.</param>
    /// <param name="bicubic">Bicubic (else bilinear) filter.</param>
    /// <param name="maxPixels">Most pixels the output and the one intermediate may have.</param>
    /// <param name="name">Names the image in errors.</param>
    /// <exception cref="ImageDecodeException">The output, or every order of the two passes, needs more than <paramref name="maxPixels"/>.</exception>
    public static byte[] Resize(byte[] src, int width, int height, int outWidth, int outHeight, bool bicubic, long maxPixels = int.MaxValue / 3, string name = "image")
    {
        if (outWidth <= 0 || outHeight <= 0 || (long)outWidth * outHeight > maxPixels)
        {
            throw new ImageDecodeException(
                $"{name}: resizing {width}x{height} to {outWidth}x{outHeight} needs {(long)outWidth * outHeight} pixels, over the {maxPixels}-pixel limit (ImageLimits.MaxIntermediatePixels).");
        }

        // torch runs the width pass first; its intermediate is height x outWidth. When only the other order fits the
        // limit (a very tall image made wide), take that one: same filters, rounding between the passes may differ by one level.
        var verticalFirst = false;
        if (outWidth != width && outHeight != height && (long)height * outWidth > maxPixels)
        {
            if ((long)width * outHeight > maxPixels)
            {
                throw new ImageDecodeException(
                    $"{name}: resizing {width}x{height} to {outWidth}x{outHeight} needs an intermediate over the {maxPixels}-pixel limit (ImageLimits.MaxIntermediatePixels).");
            }

            verticalFirst = true;
        }

        var current = src;
        if (verticalFirst)
        {
            current = Vertical(current, width, outHeight, Axis.Create(height, outHeight, bicubic));
            current = Horizontal(current, outHeight, width, outWidth, Axis.Create(width, outWidth, bicubic));
            return current;
        }

        // torch skips an axis whose size does not change; its weights would be the identity anyway.
        if (outWidth != width)
        {
            var axis = Axis.Create(width, outWidth, bicubic);
            current = Horizontal(current, height, width, outWidth, axis);
        }

        if (outHeight != height)
        {
            var axis = Axis.Create(height, outHeight, bicubic);
            current = Vertical(current, outWidth, outHeight, axis);
        }

        return ReferenceEquals(current, src) ? (byte[])src.Clone() : current;
    }

    private static byte[] Horizontal(byte[] src, int rows, int inWidth, int outWidth, Axis axis)
    {
        var dst = new byte[rows * outWidth * 3];
        var taps = axis.Taps;
        var weights = axis.Weights;
        var half = 1 << (axis.Precision - 1);
        for (var y = 0; y < rows; y++)
        {
            var rowIn = y * inWidth * 3;
            var rowOut = y * outWidth * 3;
            for (var x = 0; x < outWidth; x++)
            {
                int r = half, g = half, b = half;
                var p = rowIn + (axis.Start[x] * 3);
                var w0 = x * taps;
                var count = axis.Count[x];
                for (var k = 0; k < count; k++, p += 3)
                {
                    var w = weights[w0 + k];
                    r += src[p] * w;
                    g += src[p + 1] * w;
                    b += src[p + 2] * w;
                }

                var o = rowOut + (x * 3);
                dst[o] = Clamp(r >> axis.Precision);
                dst[o + 1] = Clamp(g >> axis.Precision);
                dst[o + 2] = Clamp(b >> axis.Precision);
            }
        }

        return dst;
    }

    private static byte[] Vertical(byte[] src, int width, int outHeight, Axis axis)
    {
        var stride = width * 3;
        var dst = new byte[outHeight * stride];
        var acc = new int[stride];
        var taps = axis.Taps;
        var half = 1 << (axis.Precision - 1);
        for (var y = 0; y < outHeight; y++)
        {
            // Accumulating whole rows keeps the inner loop contiguous in memory.
            Array.Fill(acc, half);
            var count = axis.Count[y];
            for (var k = 0; k < count; k++)
            {
                var w = axis.Weights[(y * taps) + k];
                var row = (axis.Start[y] + k) * stride;
                for (var i = 0; i < stride; i++)
                {
                    acc[i] += src[row + i] * w;
                }
            }

            var o = y * stride;
            for (var i = 0; i < stride; i++)
            {
                dst[o + i] = Clamp(acc[i] >> axis.Precision);
            }
        }

        return dst;
    }

    private static byte Clamp(int v) => (byte)Math.Clamp(v, 0, 255);

    /// <summary>Keys' cubic convolution with a = -0.5, in torch's evaluation order (Pillow's choice of a).</summary>
    private static double Cubic(double x)
    {
        const double a = -0.5;
        x = Math.Abs(x);
        if (x < 1.0)
        {
            return ((((a + 2) * x) - (a + 3)) * x * x) + 1;
        }

        return x < 2.0 ? ((((((a * x) - (5 * a)) * x) + (8 * a)) * x) - (4 * a)) : 0.0;
    }

    private static double Triangle(double x)
    {
        x = Math.Abs(x);
        return x < 1.0 ? 1.0 - x : 0.0;
    }

    /// <summary>Fixed-point filter taps of one axis: output i reads Count[i] inputs from Start[i].</summary>
    private sealed class Axis
    {
        private Axis(int[] start, int[] count, int[] weights, int taps, int precision)
        {
            Start = start;
            Count = count;
            Weights = weights;
            Taps = taps;
            Precision = precision;
        }

        public int[] Start { get; }

        public int[] Count { get; }

        /// <summary>Row-major [output, Taps].</summary>
        public int[] Weights { get; }

        public int Taps { get; }

        public int Precision { get; }

        public static Axis Create(int inSize, int outSize, bool bicubic)
        {
            var filterSupport = bicubic ? 2.0 : 1.0;
            var scale = (double)inSize / outSize;
            // Downscaling widens the filter by the scale factor; that is the antialiasing.
            var support = scale >= 1.0 ? filterSupport * scale : filterSupport;
            var invScale = scale >= 1.0 ? 1.0 / scale : 1.0;
            var taps = ((int)Math.Ceiling(support) * 2) + 1;
            var start = new int[outSize];
            var count = new int[outSize];
            var real = new double[outSize * taps];
            var maxWeight = 0.0;
            for (var i = 0; i < outSize; i++)
            {
                var center = scale * (i + 0.5);
                // Casts truncate toward zero like the C++ they mirror; a negative start is then clipped to 0.
                var xmin = Math.Max((long)(center - support + 0.5), 0L);
                var xsize = Math.Clamp(Math.Min((long)(center + support + 0.5), inSize) - xmin, 0L, taps);
                start[i] = (int)xmin;
                count[i] = (int)xsize;
                var total = 0.0;
                for (var j = 0; j < xsize; j++)
                {
                    var t = (j + xmin - center + 0.5) * invScale;
                    var w = bicubic ? Cubic(t) : Triangle(t);
                    real[(i * taps) + j] = w;
                    total += w;
                }

                if (total != 0.0)
                {
                    for (var j = 0; j < xsize; j++)
                    {
                        real[(i * taps) + j] /= total;
                        maxWeight = Math.Max(maxWeight, real[(i * taps) + j]);
                    }
                }
            }

            // The most fractional bits under which the largest weight still fits in an int16.
            var precision = 0;
            for (; precision < 22; precision++)
            {
                if ((int)(0.5 + (maxWeight * (1 << (precision + 1)))) >= 1 << 15)
                {
                    break;
                }
            }

            var weights = new int[real.Length];
            for (var k = 0; k < real.Length; k++)
            {
                var v = real[k] * (1 << precision);
                weights[k] = (short)(v < 0 ? (int)(-0.5 + v) : (int)(0.5 + v));
            }

            return new Axis(start, count, weights, taps, precision);
        }
    }
}
